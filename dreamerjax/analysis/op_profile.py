"""Where a compiled program's time goes, by op family, from a profiler trace of XLA:CPU.

`profile(fn, *args)` runs the jitted `fn` under `jax.profiler.trace` and reads the Perfetto trace
that it writes: every event that names an HLO instruction (`args.hlo_op`) is one op execution. An
op's own time is its duration less that of the ops nested in it on the same thread (a `while`
contains its body's ops). Each instruction is put in a family by its opcode in the compiled HLO
(`compiled.as_text()`), a fusion by what its fused computation holds: convolution, matrix product,
reduction, else elementwise. Op times on different threads overlap (XLA:CPU runs independent ops
at once), so the families are shares of summed op time, not of wall time. Each op also belongs to
a part of the update (`PARTS`, the `jax.named_scope`s of the train step; `hlo_parts`), and
`train_step_profile` gives each part its counted FLOPs and FLOPs per second of its op time.
`wall_times` reads the same trace by wall time instead: each moment split among the ops running
then, so the parts' seconds add up to the call (`wall_parts`), less what no op event covers.

    python -c "from dreamerjax.analysis import op_profile as p; print(p.train_step_profile('12m'))"
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from dreamerjax.analysis import flops

FAMILIES = ('convolution', 'matrix product', 'reduction', 'elementwise fusion', 'data movement',
            'loop control', 'other')
_MOVEMENT = {'copy', 'transpose', 'concatenate', 'slice', 'dynamic-slice', 'dynamic-update-slice',
             'pad', 'gather', 'scatter', 'broadcast', 'reshape', 'bitcast', 'reverse', 'iota',
             'copy-start', 'copy-done', 'tuple', 'get-tuple-element', 'parameter', 'constant'}
_CONTROL = {'while', 'conditional', 'call'}
# The named scopes of the update (`jax.named_scope` in WorldModel.loss, ActorCritic and Agent):
# an op belongs to the innermost one in its `op_name`.
PARTS = ('encoder', 'dynamics', 'decoder', 'reward_cont_heads', 'kl', 'starts', 'imagine',
         'imagined_heads', 'actor_loss', 'critic_loss', 'optimizer')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WRAPPER = re.compile(r'^(?:[\w]+\()+|\)+$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


def hlo_families(hlo_text: str) -> dict[str, str]:
  """`{instruction name: family}` for every instruction of a compiled module's HLO text."""
  computations: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      computations[current].append((match.group(1), match.group(2), line))
      continue
    header = _COMPUTATION.match(line)
    if header and '=' not in line.split('{')[0]:
      current = header.group(1)

  def contents(name: str, seen: set) -> set[str]:
    """Opcodes of a computation and of the computations it calls."""
    if name in seen:
      return set()
    seen.add(name)
    found = set()
    for _, opcode, line in computations.get(name, ()):
      found.add(opcode)
      for called in _CALLS.findall(line):
        found |= contents(called, seen)
    return found

  families = {}
  for instructions in computations.values():
    for name, opcode, line in instructions:
      if opcode == 'fusion':
        called = _CALLS.findall(line)
        inside = contents(called[0], set()) if called else set()
        families[name] = ('convolution' if 'convolution' in inside else
                          'matrix product' if 'dot' in inside else
                          'reduction' if inside & {'reduce', 'reduce-window'} else
                          'data movement' if inside and inside <= _MOVEMENT else
                          'elementwise fusion')
      elif opcode == 'convolution':
        families[name] = 'convolution'
      elif opcode == 'dot':
        families[name] = 'matrix product'
      elif opcode in ('reduce', 'reduce-window', 'select-and-scatter'):
        families[name] = 'reduction'
      elif opcode in _MOVEMENT:
        families[name] = 'data movement'
      elif opcode in _CONTROL:
        families[name] = 'loop control'
      else:
        families[name] = 'other'
  return families


def hlo_parts(hlo_text: str) -> dict[str, str]:
  """`{instruction name: part}` from each instruction's `op_name` metadata: the innermost scope
  of `PARTS` in it ('unscoped' if none), with ' (backward)' added where the op comes from a
  transpose (the gradient pass)."""
  parts = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    op_name = _OP_NAME.search(line) if match else None
    if not op_name:
      continue
    parts[match.group(1)] = part_of(op_name.group(1))
  return parts


def part_of(name_stack: str) -> str:
  """The innermost scope of `PARTS` in a `/`-joined name stack ('unscoped' if none), with
  ' (backward)' added under a transpose (the gradient pass)."""
  part, backward = 'unscoped', False
  for component in name_stack.split('/'):
    backward = backward or 'transpose(' in component
    scope = _WRAPPER.sub('', component)
    part = scope if scope in PARTS else part
  return part + (' (backward)' if backward else '')


def flops_by_part(fn, *args) -> dict[str, float]:
  """Counted FLOPs (`flops.matmul_flops`: every loop step) of `fn(*args)` by `part_of`."""
  totals: dict[str, float] = collections.defaultdict(float)
  for stack, count in flops.flops_by_scope(fn, *args).items():
    totals[part_of(stack)] += count
  return dict(totals)


def own_times(events: list[dict]) -> dict[str, float]:
  """`{hlo_op: summed own seconds}` of Perfetto 'X' events that carry `args.hlo_op`: each
  event's duration less that of the op events nested inside it on the same thread."""
  by_thread = collections.defaultdict(list)
  for event in events:
    if event.get('ph') == 'X' and 'hlo_op' in event.get('args', {}):
      by_thread[event['tid']].append(event)
  totals: dict[str, float] = collections.defaultdict(float)
  for thread_events in by_thread.values():
    thread_events.sort(key=lambda e: (e['ts'], -e['dur']))
    stack: list[list] = []  # [end, name, own]

    def close(entry):
      totals[entry[1]] += entry[2] * 1e-6

    for event in thread_events:
      start, end = event['ts'], event['ts'] + event['dur']
      while stack and stack[-1][0] <= start:
        close(stack.pop())
      if stack:
        stack[-1][2] -= event['dur']
      stack.append([end, event['args']['hlo_op'], event['dur']])
    while stack:
      close(stack.pop())
  return dict(totals)


def wall_times(events: list[dict], containers: set[str] = frozenset()) -> dict:
  """Wall time of each op, from Perfetto 'X' events that carry `args.hlo_op`: every moment of the
  traced span goes to the ops running then, split equally (two ops side by side get half each),
  so the ops' seconds add up to the span less `untraced_s`. Ops named in `containers` (a
  `while` and the ops of its body) are left out. `untraced_s`: moments with no op event, which
  are mostly ops that the CPU runtime does not trace (Eigen `dot`s). `concurrency`: seconds
  with 1, 2, ... ops running at once.

  Returns `{'ops': {hlo_op: seconds}, 'untraced_s', 'span_s', 'concurrency': {n: seconds}}`."""
  points = []
  for event in events:
    name = event.get('args', {}).get('hlo_op')
    if event.get('ph') == 'X' and name is not None and name not in containers:
      points += [(event['ts'], 1, name), (event['ts'] + event['dur'], -1, name)]
  points.sort(key=lambda p: (p[0], p[1]))
  ops: dict[str, float] = collections.defaultdict(float)
  concurrency: dict[int, float] = collections.defaultdict(float)
  active: collections.Counter = collections.Counter()
  untraced, last = 0.0, points[0][0] if points else 0.0
  for time_us, step, name in points:
    running = sum(active.values())
    if time_us > last:
      seconds = (time_us - last) * 1e-6
      if running == 0:
        untraced += seconds
      else:
        concurrency[running] += seconds
        for op, count in active.items():
          ops[op] += seconds * count / running
    active[name] += step
    if active[name] == 0:
      del active[name]
    last = time_us
  span = (points[-1][0] - points[0][0]) * 1e-6 if points else 0.0
  return {'ops': dict(ops), 'untraced_s': untraced, 'span_s': span,
          'concurrency': dict(sorted(concurrency.items()))}


def profile(fn, *args, calls: int = 1, log_dir: str | None = None, top: int = 10) -> dict:
  """Compiles `jax.jit(fn)`, runs it twice untraced (the second call's seconds are `wall_s`),
  then `calls` times under the profiler.

  Returns `{'wall_s', 'op_s', 'families': {family: {'seconds', 'share'}}, 'top_ops': [...],
  'parts', 'wall_parts', 'untraced_s', 'concurrency_s'}`, seconds per call (`op_s` summed op
  time; `share` of `op_s`; `wall_parts` and the last two from `wall_times`)."""
  compiled = jax.jit(fn).lower(*args).compile()
  hlo = compiled.as_text()
  families, parts = hlo_families(hlo), hlo_parts(hlo)
  jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  wall = time.perf_counter() - start  # untraced: starting the trace and writing it take seconds
  log_dir = log_dir or tempfile.mkdtemp(prefix='op_profile_')
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
  paths = sorted(glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise RuntimeError(f'the profiler wrote no perfetto_trace.json.gz under {log_dir}')
  with gzip.open(paths[-1], 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  ops = {name: seconds / calls for name, seconds in own_times(events).items()}
  result = summarize(ops, families, wall, parts, top)
  # The same trace by wall time: ops side by side share it (op times above overlap).
  timeline = wall_times(events, {n for n, f in families.items() if f == 'loop control'})
  by_part: dict[str, float] = collections.defaultdict(float)
  for name, seconds in timeline['ops'].items():
    by_part[parts.get(name, 'unscoped')] += seconds / calls
  result['wall_parts'] = dict(sorted(by_part.items(), key=lambda kv: -kv[1]))
  result['untraced_s'] = timeline['untraced_s'] / calls
  result['concurrency_s'] = {n: s / calls for n, s in timeline['concurrency'].items()}
  return result


def summarize(ops: dict[str, float], families: dict[str, str], wall: float,
              parts: dict[str, str] | None = None, top: int = 10) -> dict:
  """Per-family seconds and shares of `ops` (`{hlo_op: seconds}`), the `top` longest ops, and
  with `parts` (`hlo_parts`) the seconds of each part by family, longest part first."""
  total = sum(ops.values())
  by_family = collections.defaultdict(float)
  by_part = collections.defaultdict(lambda: collections.defaultdict(float))
  for name, seconds in ops.items():
    by_family[families.get(name, 'other')] += seconds
    if parts is not None:
      by_part[parts.get(name, 'unscoped')][families.get(name, 'other')] += seconds
  result = {'wall_s': wall, 'op_s': total,
            'families': {family: {'seconds': by_family[family],
                                  'share': by_family[family] / total if total else 0.0}
                         for family in FAMILIES if family in by_family},
            'top_ops': [{'op': name, 'family': families.get(name, 'other'),
                         'part': (parts or {}).get(name), 'seconds': seconds}
                        for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1])[:top]]}
  if parts is not None:
    ordered = sorted(by_part.items(), key=lambda kv: -sum(kv[1].values()))
    result['parts'] = {part: {'seconds': sum(fams.values()),
                              'share': sum(fams.values()) / total if total else 0.0,
                              'families': dict(fams)} for part, fams in ordered}
  return result


def train_step_profile(size: str = '12m', obs: str = 'image', arch: str = 'paper',
                       batch: int = 16, length: int = 64, calls: int = 1, top: int = 10) -> dict:
  """`profile` of the agent's train step at `size` (the `benchmark.side_record` setup: 17
  actions, a synthetic batch)."""
  from dreamerjax.analysis import benchmark
  agent = benchmark.bench_agent(size, obs, model={'arch': arch})
  state = jax.jit(agent.init)(jax.random.key(0))
  data = benchmark.synthetic_batch(benchmark.OBS_SPACES[obs], batch, length, 17)
  result = profile(agent.train_step, state, data, calls=calls, top=top)
  for part, count in flops_by_part(agent.train_step, state, data).items():
    entry = result['parts'].setdefault(part, {'seconds': 0.0, 'share': 0.0, 'families': {}})
    entry['counted_flops'] = count
    entry['flops_per_op_s'] = count / entry['seconds'] if entry['seconds'] else None
  return {'size': size, 'obs': obs, 'arch': arch, 'batch': [batch, length], **result}
