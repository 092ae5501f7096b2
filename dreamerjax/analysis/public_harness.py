"""Side by side with the 2024 public DreamerV3 code (github.com/danijar/dreamerv3, pinned commit).

`prepare` clones that code into a scratch folder outside the repository and builds a virtual
environment for it from PyPI (nothing of it is vendored); `compare` then measures, in one run
and alternating between the sides (public, ours, ours, public, ours, ours, ...: one fresh process
per measurement, compile + 2 warm-up calls + `repeats` timed calls), for every preset and
observation kind:

- `public`: the public code as shipped (`public_driver.py` in its own environment);
- `public2024`: dreamerjax with `model.arch=public2024`, the same networks (equal architecture);
- `paper`: dreamerjax's default networks (each side's own default).

Each record holds parameters per part, XLA FLOPs (`cost_analysis`, loop bodies once), counted
FLOPs (`flops.matmul_flops`, every loop step), work FLOPs (the same network's work counted alike
on both sides, `_pair`), compile seconds and each timed call's seconds;
`summarize` adds the ratios and the issue's targets as pass/fail fields, against the best f32
matmul rate measured in the same run (`flops.matmul_peak`, in both runtimes).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

import dreamerjax
from dreamerjax.run import sweeps

REPOSITORY = 'https://github.com/danijar/dreamerv3'
COMMIT = 'e3f02248693a79dc8b0ebd62c93683888ddaccfe'  # 2024 head: "Fix Atari frame maxpooling"
# Its requirements.txt, less the environments' packages and CUDA (jax[cuda12]==0.4.33 -> the CPU
# build of the same release), at the versions this was measured with.
REQUIREMENTS = ('jax==0.4.33', 'jaxlib==0.4.33', 'numpy==1.26.4', 'chex==0.1.90',
                'einops==0.8.2', 'elements==3.22.4', 'ninjax==3.6.3', 'optax==0.2.5',
                'portal==3.8.3', 'cloudpickle==3.1.3', 'ruamel.yaml==0.19.1')
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'public_driver.py')
ROOT = str(sweeps.REPOSITORY_ROOT)
PARTS = ('encoder', 'dynamics', 'decoder', 'reward', 'continue', 'actor', 'critic')


def _run(command: list[str], **kwargs) -> None:
  subprocess.run(command, check=True, **kwargs)


def prepare(workdir: str, source: str = REPOSITORY, python: str = 'python3.11',
            commit: str = COMMIT) -> dict:
  """Clones `source` (a URL, a local clone or a bare git directory) at `commit` into
  `workdir/src` and builds `workdir/venv` with `REQUIREMENTS`; both are kept and reused when
  they are already there at that commit. Returns the paths."""
  src, venv = os.path.join(workdir, 'src'), os.path.join(workdir, 'venv')
  os.makedirs(workdir, exist_ok=True)
  head = ''
  if os.path.isdir(os.path.join(src, '.git')):
    head = subprocess.run(['git', '-C', src, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True).stdout.strip()
  if head != commit:
    shutil.rmtree(src, ignore_errors=True)
    _run(['git', 'clone', '--quiet', source, src])
    _run(['git', '-C', src, 'checkout', '--quiet', commit])
  interpreter = os.path.join(venv, 'bin', 'python')
  stamp = os.path.join(venv, 'dreamerjax-requirements.txt')
  wanted = '\n'.join(REQUIREMENTS) + '\n'
  if not (os.path.exists(stamp) and open(stamp).read() == wanted):
    shutil.rmtree(venv, ignore_errors=True)
    _run([python, '-m', 'venv', venv])
    _run([interpreter, '-m', 'pip', 'install', '--quiet', *REQUIREMENTS])
    with open(stamp, 'w') as file:
      file.write(wanted)
  return {'source': src, 'python': interpreter, 'commit': commit, 'requirements': REQUIREMENTS}


def _record(command: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)
  if result.returncode != 0 or 'RECORD ' not in result.stdout:
    raise RuntimeError(f'{command[:3]} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.split('RECORD ', 1)[1].splitlines()[0])


def older_jax_flags(flags: str) -> str:
  """`XLA_FLAGS` less the ones the public code's jax 0.4.33 refuses (`dreamerjax.OLDER_JAX_DROPS`:
  YNNPACK's, a library that jax lacks; its convolutions run in Eigen as ours do). The public
  code then replaces `XLA_FLAGS` with its own list (`embodied/jax/internal.py`: on CPU, flags for
  GPUs only); its record holds the flags it ran with (`xla_flags`)."""
  return ' '.join(flag for flag in flags.split()
                  if flag.lstrip('-').split('=')[0] not in dreamerjax.OLDER_JAX_DROPS)


def public_record(paths: dict, size: str, obs: str, repeats: int) -> dict:
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = older_jax_flags(environment.get('XLA_FLAGS', ''))
  return _record([paths['python'], DRIVER, f'--source={paths["source"]}', f'--size={size}',
                  f'--obs={obs}', f'--repeats={repeats}'], env=environment)


def ours_record(size: str, obs: str, arch: str, repeats: int) -> dict:
  environment = dict(os.environ)
  environment['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, environment.get('PYTHONPATH')]))
  code = ('import json\nfrom dreamerjax.analysis import benchmark\n'
          f'print("RECORD", json.dumps(benchmark.side_record({size!r}, {obs!r}, {arch!r}, '
          f'repeats={repeats})))')
  return _record([sys.executable, '-c', code], env=environment)


def compare(paths: dict, sizes=('1m',), observations=('image', 'vector'), rounds: int = 1,
            repeats: int = 3, log=print) -> list[dict]:
  """Every record of the comparison, measured in alternation (see the module docstring)."""
  records = []
  for size in sizes:
    for obs in observations:
      for round_index in range(rounds):
        for side in ('public', 'public2024', 'paper'):
          start = time.time()
          try:
            record = (public_record(paths, size, obs, repeats) if side == 'public'
                      else ours_record(size, obs, side, repeats))
          except (RuntimeError, subprocess.TimeoutExpired) as error:  # e.g. killed for memory
            record = {'preset': size, 'obs': obs, 'error': str(error)[-2000:]}
            log(f'{size} {obs} {side} failed: {str(error)[:300]}')
          record.update(config=side, round=round_index, started_utc=time.strftime(
              '%H:%M:%S', time.gmtime(start)), load_average=os.getloadavg())
          if 'error' not in record:
            log(f'{size} {obs} {side}: {json.dumps(_brief(record))}')
          records.append(record)
  return records


def _brief(record: dict) -> dict:
  calls = record['step_s_calls']
  return {'params': record['params_by_part']['total'], 'counted_flops': record['counted_flops'],
          'compile_s': round(record['compile_s'], 1),
          'lower_s': round(record.get('lower_s', float('nan')), 1),
          'step_s': [round(t, 2) for t in calls]}


def _side(records: list[dict]) -> dict:
  """One configuration's figures over its records (all rounds): the median, min and max over
  every timed call, the median compile time, the median system CPU seconds per call, and the
  scratch memory of a call (`scratch_bytes`, None where the backend reports none)."""
  calls = [t for record in records for t in record['step_s_calls']]
  sys_calls = [t for record in records for t in record['step_sys_s_calls']]
  first = records[0]
  median = float(np.median(calls))
  return {'params_by_part': first['params_by_part'], 'xla_flops': first['xla_flops'],
          'counted_flops': first['counted_flops'],
          'work_flops': first.get('work_flops', first['counted_flops']),
          'compile_s': float(np.median([r['compile_s'] for r in records])),
          'lower_s': float(np.median([r.get('lower_s', float('nan')) for r in records])),
          'step_s_median': median, 'step_s_min': min(calls), 'step_s_max': max(calls),
          'step_s_calls': calls, 'step_sys_s_calls': sys_calls,
          'step_sys_s_median': float(np.median(sys_calls)),
          'scratch_bytes': first['scratch_bytes'],
          'counted_flops_per_s': first['counted_flops'] / median,
          'xla_flops_per_s': first['xla_flops'] / median}


def _pair(public: dict, ours: dict, peak: float, size: str) -> dict:
  """Ratios of ours against the public code and the targets, as pass/fail.

  Equal work: parameters equal per part (1%) and work FLOPs within 5%. Work FLOPs count the same
  network's work alike on both sides: the public code's counted FLOPs less its second policy pass
  over the imagined states (`public_driver.repeated_policy_flops`), and ours with the decoder's
  layers counted in their direct form, upsample then convolve, where we run them by phases at
  their input's resolution with 36 / 100 of their products (`benchmark.direct_form_flops`).
  Achieved FLOP/s and the share of the peak count the FLOPs each side runs (`counted_flops`)."""
  part_error = {part: abs(ours['params_by_part'][part] / public['params_by_part'][part] - 1)
                for part in PARTS if public['params_by_part'][part]}
  work_ratio = ours['work_flops'] / public['work_flops']
  speedup = public['step_s_median'] / ours['step_s_median']
  rate_ratio = ours['counted_flops_per_s'] / public['counted_flops_per_s']
  equal = max(part_error.values()) <= 0.01 and abs(work_ratio - 1) <= 0.05
  pair = {'params_part_max_rel_error': max(part_error.values()),
          'counted_flops_ratio': ours['counted_flops'] / public['counted_flops'],
          'work_flops_ratio': work_ratio, 'speedup': speedup,
          'flops_per_s_ratio': rate_ratio, 'fraction_of_peak': ours['counted_flops_per_s'] / peak,
          'compile_ratio': ours['compile_s'] / public['compile_s'],
          'scratch_ratio': (ours['scratch_bytes'] / public['scratch_bytes']
                            if ours['scratch_bytes'] and public['scratch_bytes'] else None),
          'equal_work': equal}
  pair['targets'] = {
      'speedup_2x_at_equal_work': bool(equal and speedup >= 2.0),
      'flops_per_s_1_5x': bool(rate_ratio >= 1.5),
      'compile_no_worse': bool(ours['compile_s'] <= public['compile_s'])}
  if size == '12m':
    pair['targets']['half_of_peak_at_12m'] = bool(pair['fraction_of_peak'] >= 0.5)
  return pair


def summarize(records: list[dict]) -> dict:
  """Rows per preset and observation: each side's figures, the equal-architecture pair (public
  against `public2024`) and the own-default pair (public against `paper`)."""
  failed = [r for r in records if 'error' in r]
  records = [r for r in records if 'error' not in r]
  peak = max(r['matmul_peak']['flops_per_s'] for r in records)
  rows = []
  keys = sorted({(r['preset'], r['obs']) for r in records + failed},
                key=lambda k: (k[0] != '1m', k))
  for size, obs in keys:
    sides = {}
    for config in ('public', 'public2024', 'paper'):
      mine = [r for r in records if (r['preset'], r['obs'], r['config']) == (size, obs, config)]
      if mine:
        sides[config] = _side(mine)
    row = {'preset': size, 'obs': obs, 'sides': sides,
           'failed': [r['config'] for r in failed if (r['preset'], r['obs']) == (size, obs)]}
    for name, config in (('equal_architecture', 'public2024'), ('own_default', 'paper')):
      if 'public' in sides and config in sides:  # a side that failed has no ratios
        row[name] = _pair(sides['public'], sides[config], peak, size)
    rows.append(row)
  return {'matmul_peak_flops_per_s': peak,
          'matmul_peaks': {f"{r['config']} {r['preset']} {r['obs']} {r['round']}":
                           r['matmul_peak']['flops_per_s'] for r in records},
          'rows': rows, 'failed': failed}


def machine() -> dict:
  return {'cpu_count': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
          'python': platform.python_version(), 'date_utc': time.strftime(
              '%Y-%m-%d %H:%M', time.gmtime())}
