"""The accelerator suite (`make bench-accelerator`) at tiny sizes on CPU: every part runs and
lands in the JSON; parts past the time budget are skipped, not lost."""

import json

from dreamerjax.analysis import accelerator


def test_suite_writes_every_part(tmp_path):
  out = str(tmp_path / 'accelerator.json')
  result = accelerator.run_suite(out, sizes=('debug',), dtypes=('float32',), seeds=2,
                                 seeds_size='debug', scaling_size='debug', per_device_batch=2,
                                 atari_size='debug', acting_steps=200, repeats=1, batch=2,
                                 length=8)
  with open(out, encoding='utf-8') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result))
  assert written['skipped'] == []
  (step,) = written['train_step']
  assert step['preset'] == 'debug' and step['dtype'] == 'float32' and step['step_s'] > 0
  assert (step['batch'], step['length']) == (2, 8)
  assert 'peak_memory_bytes' in step  # None on CPU, bytes on GPUs
  seeds = written['seeds']
  assert seeds['seeds'] == 2 and seeds['ratio'] > 0
  # The single agent is the float32 update timed above, not compiled again.
  assert seeds['one']['step_s'] == step['step_s'] and 'step_s' in seeds['vmapped']
  assert [r['devices'] for r in written['scaling']] == [1]
  atari = written['atari100k_projection']
  assert atari['updates'] == int(100_000 * atari['train_ratio'] / (16 * 64))
  # The float32 update of the Atari size was measured above and is not timed again.
  assert atari['step_s'] == step['step_s'] and atari['step_batch'] == [2, 8]
  assert atari['projected_hours'] > 0 and atari['acting_env_steps_per_s'] > 0


def test_parts_past_the_budget_are_skipped(tmp_path):
  out = str(tmp_path / 'accelerator.json')
  result = accelerator.run_suite(out, sizes=('debug',), dtypes=('float32', 'bfloat16'),
                                 budget_s=-1.0)
  assert result['skipped'] == ['train_step/debug/float32', 'train_step/debug/bfloat16', 'seeds',
                               'scaling', 'atari100k_projection']
  with open(out, encoding='utf-8') as f:
    assert json.load(f)['skipped'] == result['skipped']
