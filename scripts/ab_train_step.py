"""Two versions of the code, one train step each, timed in one process with calls alternated.

    python scripts/ab_train_step.py --base=HEAD~1 --size=12m --obs=vector --arch=public2024
    python scripts/ab_train_step.py --base=HEAD~1 --size=12m --obs=image --rounds=6
    python scripts/ab_train_step.py --base=HEAD~1 --size=1m --continuous=6 --rounds=20

The working tree's `dreamerjax/` against `git archive <base> dreamerjax` (unpacked into a
temporary folder). Both programs are compiled in the same process and their calls alternate, so a
drift of the host's speed between runs minutes apart (docs/benchmarks.md, "Noise") falls on both
sides alike. Prints each side's median and every call's seconds, and whether the two programs'
metrics agree; `--out` writes them as JSON.

Two programs in one process share the allocator: where their scratch buffers differ in size (an
unrolled loop against a scan, say), one side can pay for fresh pages the other does not, and a
gain seen here then needs confirming in separate processes (docs/benchmarks.md, "Categorical
draws by the inverse CDF"). Identical programs differed by up to 2.8% in median on a noisy host.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from dreamerjax.run import cli  # noqa: E402

_BASE = flags.DEFINE_string('base', 'HEAD', 'Git revision of the other side.')
_SIZE = flags.DEFINE_string('size', '12m', 'Size preset.')
_OBS = flags.DEFINE_enum('obs', 'vector', ['vector', 'image'], 'Observation kind.')
_ARCH = flags.DEFINE_string('arch', 'paper', 'model.arch (paper or public2024).')
_ROUNDS = flags.DEFINE_integer('rounds', 8, 'Timed calls per side, alternated.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON file for the result.')
_CONTINUOUS = flags.DEFINE_integer('continuous', 0, 'With N > 0, N continuous actions instead '
                                   'of 17 discrete ones (the actor learns by dynamics backprop).')


def _compile(tree: str):
  """`(compiled train step, state, batch)` of the `dreamerjax` package under `tree`. Only calls
  that older revisions have too (`bench_agent`, `synthetic_batch`, `Agent`'s arguments), so any
  base can be timed."""
  for name in [n for n in sys.modules if n == 'dreamerjax' or n.startswith('dreamerjax.')]:
    del sys.modules[name]
  sys.path.insert(0, tree)
  try:
    import jax

    from dreamerjax.analysis import benchmark
    actions = _CONTINUOUS.value or 17
    agent = benchmark.bench_agent(_SIZE.value, _OBS.value, actions, model={'arch': _ARCH.value})
    if _CONTINUOUS.value:  # the same agent with a continuous action space
      agent = dataclasses.replace(agent, discrete=False)
    state = jax.jit(agent.init)(jax.random.key(0))
    batch = benchmark.synthetic_batch(benchmark.OBS_SPACES[_OBS.value], 16, 64, actions)
    start = time.perf_counter()
    compiled = jax.jit(agent.train_step).lower(state, batch).compile()
    logging.info('%s: compiled in %.1f s', tree, time.perf_counter() - start)
    return compiled, state, batch
  finally:
    sys.path.remove(tree)


def main(argv):
  del argv
  import jax
  logging.set_verbosity(logging.INFO)
  with tempfile.TemporaryDirectory(prefix='ab_train_step_') as base_tree:
    archive = subprocess.run(['git', 'archive', _BASE.value, 'dreamerjax'], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', base_tree], input=archive, check=True)
    sides = {f'base ({_BASE.value})': _compile(base_tree), 'working tree': _compile(ROOT)}
  metrics, seconds = {}, {name: [] for name in sides}
  for name, (compiled, state, batch) in sides.items():
    metrics[name] = jax.device_get(compiled(state, batch)[1])
    jax.block_until_ready(compiled(state, batch))
  for _ in range(_ROUNDS.value):
    for name, (compiled, state, batch) in sides.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, batch))
      seconds[name].append(time.perf_counter() - start)
  first, second = metrics.values()
  shared = sorted(set(first) & set(second))
  differ = max((abs(float(first[k]) - float(second[k])) / (abs(float(first[k])) + 1e-6)
                for k in shared), default=0.0)
  result = {'size': _SIZE.value, 'obs': _OBS.value, 'arch': _ARCH.value,
            'allocator': allocator.active(),
            'sides': {name: {'step_s_median': float(np.median(s)), 'step_s_calls': s}
                      for name, s in seconds.items()},
            'metric_keys_equal': set(first) == set(second), 'metrics_max_rel_diff': differ}
  for name, side in result['sides'].items():
    logging.info('%s: median %.4f s, calls %s', name, side['step_s_median'],
                 [round(s, 3) for s in side['step_s_calls']])
  logging.info('metrics: same keys %s, largest relative difference %.2g',
               result['metric_keys_equal'], differ)
  if _OUT.value:
    with open(_OUT.value, 'w') as file:
      json.dump(result, file, indent=2)


if __name__ == '__main__':
  cli.run(main)
