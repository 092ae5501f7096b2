"""The valid range of every option (validation.RULES), conflicting options, and configuration errors
as one line on stderr with exit status 2."""

import math
import os
import subprocess
import sys

import pytest

from dreamerjax.run import configs, validation
from tests.conftest import ROOT


def resolved(variant: str) -> configs.ml_collections.ConfigDict:
  config = configs.base()
  config.variant = variant
  if variant == 'dreamerv4':  # offline: needs a dataset directory to be valid
    config.run.dataset = ROOT
  return configs.resolve(config)


def test_every_numeric_option_of_every_variant_has_a_rule():
  for variant in configs.VARIANTS:
    missing = [path for path in validation.numeric_options(resolved(variant))
               if path not in validation.RULES]
    assert not missing, f'{variant}: no rule in validation.RULES for {missing}'
  assert set(validation.RULES) <= set(validation.all_options(configs.base()))


def test_defaults_of_every_variant_and_suite_are_valid(monkeypatch):
  monkeypatch.setattr(os.path, 'isfile', lambda path: True)  # dreamerv4's dataset manifest
  for variant in configs.VARIANTS:
    validation.validate(resolved(variant))
  for name in ('classic', 'atari100k', 'atari', 'dmc_proprio', 'dmc_vision'):
    module = configs.load_file(os.path.join(ROOT, 'experiments', f'{name}.py'))
    for arg in (None, 'debug'):
      validation.validate(configs.resolve(module.get_config(arg)))


@pytest.mark.reliability
def test_each_option_out_of_range_is_refused_naming_its_flag(figure):
  config = resolved('dreamerv3')
  figure('bad inputs refused', cases=len(validation.RULES))
  for path, rule in validation.RULES.items():
    changed = configs.ml_collections.ConfigDict(config.to_dict())
    *parents, key = path.split('.')
    section = changed
    for parent in parents:
      section = section[parent]
    with section.ignore_type():
      section[key] = rule.refused_example()
    with pytest.raises(configs.ConfigError, match=f'--config.{path} must be') as error:
      validation.validate(changed)
    assert '\n' not in str(error.value)


def test_rules_refuse_nan_inf_bools_and_fractions_of_counts():
  assert not validation.RULES['optim.model_lr'].allows(math.nan)
  assert not validation.RULES['run.save_every_minutes'].allows(math.inf)
  assert not validation.RULES['run.steps'].allows(True)
  assert not validation.RULES['run.steps'].allows(1.5)
  assert not validation.RULES['env.image_size'].allows(40)
  assert validation.RULES['agent.actor_grad_mix'].allows(-1.0)
  assert not validation.RULES['agent.actor_grad_mix'].allows(-0.5)
  assert validation.RULES['env.max_episode_steps'].allows(None)
  assert validation.RULES['agent.return_norm_percentiles'].allows([5.0, 95.0])  # from config.json


def test_explicit_size_wins_over_debug_and_variant_values(caplog):
  import logging
  with caplog.at_level(logging.INFO):
    config = configs.experiment('size=tiny,debug', {})
  assert config.size == 'tiny' and config.run.steps == configs.DEBUG['run']['steps']
  assert 'keeps size tiny' in caplog.text
  assert configs.experiment('debug', {}).size == 'debug'
  suite = configs.load_file(os.path.join(ROOT, 'experiments', 'classic.py'))
  assert suite.get_config('variant=planet').size == 'debug'  # the variant's suite value
  assert suite.get_config('variant=planet,size=tiny').size == 'tiny'


# The inputs of the report that found these gaps: each must be refused with the flag named.
BAD_FLAGS = ['--config.optim.model_lr=-1', '--config.run.prefill=-3',
             '--config.run.eval_episodes=-1', '--config.run.log_every=0',
             '--config.run.save_every_minutes=-1', '--config.agent.entropy=-0.1',
             '--config.agent.horizon=0', '--config.run.batch_length=1',
             '--config.run.steps=abc', '--config.run.stepz=10']


def start_train_script(*arguments, workdir):
  command = [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'),
             '--config=experiments/classic.py:debug', f'--workdir={workdir}', *arguments]
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)


@pytest.mark.reliability
def test_bad_flags_are_one_line_on_stderr_with_status_2(tmp_path, figure):
  figure('bad inputs refused', cases=len(BAD_FLAGS))
  workdir = tmp_path / 'run'
  # Side by side: each start costs seconds of imports (the flags are checked before compiling).
  runs = [(flag, start_train_script(flag, workdir=workdir)) for flag in BAD_FLAGS]
  runs.append(('--verbose', start_train_script(BAD_FLAGS[0], '--verbose', workdir=workdir)))
  for flag, process in runs:
    _, stderr = process.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert process.returncode == 2, (flag, stderr[-2000:])
    if flag == '--verbose':
      assert 'Traceback' in stderr and lines[-1].startswith('train.py: error:')
      continue
    assert len(lines) == 1 and 'error:' in lines[0] and flag.split('=')[0] in lines[0], lines
  assert not workdir.exists()
