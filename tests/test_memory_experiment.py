"""The memory experiment: each arm's config, matched parameter counts, the table math, the success
metric and a tiny run of the world-model-only tier."""

import json
import math
import os

import jax
import numpy as np
import pytest

from dreamerjax.agents.agent import Agent
from dreamerjax.analysis import benchmark, memory_probe, memory_table
from dreamerjax.data import memory
from dreamerjax.run import configs, sweeps, validation
from dreamerjax.run.logger import eval_metrics
from tests.conftest import ROOT

EXPERIMENT = configs.load_file(os.path.join(ROOT, 'experiments', 'memory.py'))


def config_of(options: str) -> configs.ml_collections.ConfigDict:
  config = configs.resolve(EXPERIMENT.get_config(options))
  validation.validate(config)
  return config


@pytest.mark.parametrize('length', [5, 30, 120])
def test_each_arm_resolves_to_its_dynamics(length):
  expected = {  # arm: (dynamics, context or None, replay_context, task)
      'rssm': ('rssm', None, False, f'jax:CueRecall-{length}'),
      'transformer8': ('transformer', 8, False, f'jax:CueRecall-{length}'),
      'transformer': ('transformer', length + 1, False, f'jax:CueRecall-{length}'),
      'ssm': ('ssm', None, False, f'jax:CueRecall-{length}'),
      'rssm_replay': ('rssm', None, True, f'jax:CueRecall-{length}'),
      'random': ('rssm', None, False, f'jax:CueRecall-{length}'),
      'oracle': ('rssm', None, False, f'jax:CueRecallOracle-{length}'),
  }
  assert set(expected) == set(EXPERIMENT.ARMS)
  for arm, (dynamics, context, replay_context, task) in expected.items():
    config = config_of(f'task=CueRecall-{length},arm={arm}')
    assert (config.model.dynamics, config.model.replay_context, config.task) == (
        dynamics, replay_context, task), arm
    if context is not None:
      assert config.model.context == context, arm
    assert config.num_seeds == 5
    assert config.run.batch_length >= max(64, 2 * (length + 1))
    assert (config.run.prefill > config.run.steps) == (arm == 'random'), arm
    assert EXPERIMENT.arm_of(json.loads(json.dumps(config.to_dict()))) == arm


def test_options_and_errors():
  assert config_of('task=jax:RepeatPrevious-8,arm=ssm').task == 'jax:RepeatPrevious-8'
  assert config_of('arm=rssm,debug').run.steps < 1000
  with pytest.raises(configs.ConfigError, match='unknown memory arm'):
    EXPERIMENT.get_config('arm=lstm')
  with pytest.raises(configs.ConfigError, match='oracle needs a CueRecall'):
    EXPERIMENT.get_config('task=RepeatPrevious-8,arm=oracle')
  assert memory.span('jax:CueRecallOracle-15') == 15 and memory.span('RepeatPrevious-4') == 4
  with pytest.raises(ValueError, match='not a memory task'):
    memory.span('DiscountingChain-1')


@pytest.mark.parametrize('size', sorted(EXPERIMENT.MATCHED))
def test_transformer_and_ssm_arms_match_the_rssm_in_dynamics_parameters(size):
  env = memory.make('CueRecall-30')
  counts = {}
  for arm in ('rssm', 'transformer', 'transformer8', 'ssm'):
    config = config_of(f'task=CueRecall-30,arm={arm},size={size}')
    agent = Agent(config, env.obs_space, True, env.act_space.num_actions)
    counts[arm] = benchmark.dynamics_params(agent)
  for arm in ('transformer', 'transformer8', 'ssm'):
    assert abs(counts[arm] / counts['rssm'] - 1.0) < 0.1, (arm, counts)


def test_sweep_files_name_every_arm():
  short = sweeps.expand(sweeps.load_sweep(os.path.join(ROOT, 'experiments/sweeps/memory.py')),
                        '/tmp/unused')
  long = sweeps.expand(sweeps.load_sweep(os.path.join(ROOT,
                                                      'experiments/sweeps/memory_long.py')),
                       '/tmp/unused')
  assert len(short) == 3 * len(EXPERIMENT.ARMS) and len(long) == 2 * len(EXPERIMENT.ARMS)
  assert 'CueRecall-30__transformer8__seed0' in {run.name for run in short}
  assert 'arm=transformer8' in short[0].command_line or any(
      'arm=transformer8' in run.command_line for run in short)


# ----------------------------------------------------------------------------- table math


def test_bootstrap_interval_and_steps_to_threshold():
  assert memory_table.bootstrap_interval([0.7] * 5) == (0.7, 0.7)
  low, high = memory_table.bootstrap_interval([0.0, 0.0, 1.0, 1.0, 1.0], reps=4000)
  assert 0.0 <= low < 0.6 < high <= 1.0
  # With 5 draws of {0, 1} the mean is k/5; the 2.5th percentile of Binomial(5, 0.6)/5 is 0.2.
  assert low == pytest.approx(0.2) and high == pytest.approx(1.0)
  assert memory_table.steps_to_threshold([300, None, 100]) == (300, 2)
  assert memory_table.steps_to_threshold([None, None, 100]) == (None, 1)
  assert memory_table.steps_to_threshold([400, 200, None, None]) == (None, 2)  # median inf
  assert memory_table.steps_to_threshold([100, 300]) == (200, 2)
  assert memory_table.steps_to_threshold([]) == (None, 0)


def test_seconds_per_update_and_projection():
  rows = [{'step': 2000, 'run/seconds': 1.0, 'run/updates': 0.0},
          {'step': 3000, 'run/seconds': 50.0, 'run/updates': 30.0},
          {'step': 4000, 'run/seconds': 80.0, 'run/updates': 60.0}]
  assert memory_table.seconds_per_update(rows) == pytest.approx(1.0)
  assert memory_table.seconds_per_update(rows[:2]) is None
  # 30 s per 1000 steps after the first row with updates: 80 + 16 * 30 at 20k steps.
  assert memory_table.projected_seconds(rows, 20_000) == pytest.approx(80 + 16 * 30)
  assert memory_table.projected_seconds(rows, 4000) == pytest.approx(80)
  # Resumed at 4000: the new process counts its seconds from 0 again.
  resumed = rows + [{'step': 5000, 'run/seconds': 40.0, 'run/updates': 90.0},
                    {'step': 6000, 'run/seconds': 70.0, 'run/updates': 120.0}]
  assert [row['run/seconds'] for row in memory_table.run_seconds(resumed)] == [
      1.0, 50.0, 80.0, 120.0, 150.0]
  assert memory_table.seconds_per_update(resumed) == pytest.approx(100 / 90)
  assert memory_table.projected_seconds(resumed, 6000) == pytest.approx(150)


def test_success_is_an_eval_metric():
  env = memory.make('CueRecall-5')
  row = eval_metrics([1.0, -1.0, 1.0, np.nan], env.success)
  assert row['eval/success'] == pytest.approx(2 / 3)
  assert 'eval/success' not in eval_metrics([1.0])


def test_elapsed_steps_and_sign_accuracy():
  first = np.array([[True, False, False, True, False], [False, True, False, False, False]])
  np.testing.assert_array_equal(memory_probe.elapsed_steps(first),
                                [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]])
  # right, right, a tie (one half), wrong
  assert memory_probe.sign_accuracy([0.3, -2.0, 0.0, 1.0], [1, -1, 1, -1]) == 0.625
  # a probe that learned nothing predicts its balanced training mean, exactly 0: chance, not 0
  assert memory_probe.sign_accuracy(np.zeros(6), [1, -1, 1, -1, 1, -1]) == 0.5


def write_run(folder, task, arm, scores_by_seed, budget=1000):
  """A run folder of experiments/memory.py as the loop writes it (config.json, metrics.jsonl)."""
  config = json.loads(json.dumps(EXPERIMENT.get_config(f'task={task},arm={arm}').to_dict()))
  config['run']['steps'], config['num_seeds'] = budget, len(scores_by_seed)
  os.makedirs(folder)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
    for step in (500, 1000):
      f.write(json.dumps({'step': step, 'run/seconds': step / 100, 'run/updates': step / 10})
              + '\n')
      for seed, (early, late) in enumerate(scores_by_seed):
        f.write(json.dumps({'step': step, 'seed': seed,
                            'eval/success': early if step == 500 else late}) + '\n')


def test_reward_choice_accuracy_of_an_untrained_model_is_chance():
  # The twohot reward head starts at zero weights: every prediction is exactly 0, so every
  # answer and every choice is a tie worth one half, on whatever streams.
  config = configs.resolve(EXPERIMENT.get_config('task=CueRecall-3,arm=rssm,debug'))
  env = memory.CueRecall(length=3)
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  params = agent.world_model.init(jax.random.key(0))
  data = memory_probe.random_streams(env, num_envs=6, steps=40, seed=0)
  scores = memory_probe.reward_choice_accuracy(agent.world_model, params, data, 3,
                                               jax.random.key(1))
  assert scores == {'observed': 0.5, 'imagined': 0.5}
  assert memory_probe.reward_choice_accuracy(agent.world_model, params, data, 50,
                                             jax.random.key(1))['imagined'] is None
  # four suits, all tied: a quarter
  env = memory.RepeatPrevious(k=2)
  config = configs.resolve(EXPERIMENT.get_config('task=RepeatPrevious-2,arm=rssm,debug'))
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  params = agent.world_model.init(jax.random.key(0))
  data = memory_probe.random_streams(env, num_envs=4, steps=60, seed=0)
  assert memory_probe.reward_choice_accuracy(agent.world_model, params, data, 2,
                                             jax.random.key(1)) == {'observed': 0.5,
                                                                    'imagined': 0.25}


def test_choice_accuracy_by_hand():
  values = np.array([[0.2, 0.9], [0.5, -1.0], [0.3, 0.3], [1.0, 0.0]])
  # right action valued higher, higher, tied, lower
  assert memory_probe.choice_accuracy(values, [1, 0, 0, 1]) == pytest.approx(2.5 / 4)
  three = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
  assert memory_probe.choice_accuracy(three, [1, 0]) == 0.5  # beaten by action 2; top
  # three actions tie for the top with the right one: a third; all four tie: a quarter
  ties = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  assert memory_probe.choice_accuracy(ties, [0, 2]) == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_repeat_previous_recall_labels_and_answer_steps():
  # RepeatPrevious-2: the label at delay 2 is the card seen two steps back, which is exactly the
  # suit the env scores (truth/target) at every step 2 or more into an episode.
  env = memory.RepeatPrevious(k=2)
  data = memory_probe.random_streams(env, num_envs=3, steps=120, seed=0)  # crosses an episode end
  at, labels = memory_probe.recall_labels(data, 2)
  elapsed = memory_probe.elapsed_steps(data['is_first'])
  np.testing.assert_array_equal(at, elapsed >= 2)
  np.testing.assert_array_equal(labels[at], data['truth/target'][at])
  np.testing.assert_array_equal(labels[0, 5], data['vector'][0, 3])
  at0, labels0 = memory_probe.recall_labels(data, 0)
  assert at0.all() and (labels0 == data['vector']).all()
  query, right = memory_probe.answer_steps(data, 2)
  np.testing.assert_array_equal(query, (elapsed >= 2) & ~data['is_last'])
  np.testing.assert_array_equal(right[query], np.argmax(data['truth/target'][query], -1))
  # the action after a query step earns +1/(T - k) exactly when it names `right`
  rewards = data['reward'][:, 1:][query[:, :-1]]
  named = np.argmax(data['action'][:, 1:], -1)[query[:, :-1]] == right[:, :-1][query[:, :-1]]
  np.testing.assert_allclose(rewards, np.where(named, 1.0, -1.0) / (env.episode_length - 2))
  # one-hot labels score by the largest prediction
  assert memory_probe.label_accuracy(np.array([[0.1, 0.7, 0.1, 0.1], [0.5, 0.2, 0.2, 0.1]]),
                                     np.eye(4)[[1, 2]]) == 0.5
  with pytest.raises(ValueError, match='truth/cue .* or truth/target'):
    memory_probe.recall_labels({'is_first': data['is_first']}, 1)


def test_table_from_run_folders(tmp_path):
  root = tmp_path / 'memory'
  write_run(root / 'a', 'CueRecall-5', 'rssm', [(0.5, 1.0), (0.95, 1.0), (0.5, 0.5)])
  write_run(root / 'b', 'CueRecall-5', 'random', [(0.5, 0.5), (0.5, 0.5), (0.5, 0.5)])
  write_run(root / 'c', 'CueRecall-15', 'rssm', [(0.5, 0.5), (0.5, 0.5), (0.5, 0.5)])
  with open(root / 'a' / memory_probe.PROBE_FILE, 'w') as f:
    json.dump({'span': 5, 'accuracy': [{'0': 1.0, '5': 0.75}, {'0': 1.0, '5': 0.25}]}, f)
  cells = {(cell.span, cell.arm): cell for cell in memory_table.collect(str(root))}
  rssm = cells[(5, 'rssm')]
  assert rssm.scores == (1.0, 1.0, 0.5) and rssm.reached == (1000, 500, None)
  assert rssm.probe == (0.75, 0.25) and rssm.seconds_per_update == pytest.approx(0.1)
  assert memory_table.steps_to_threshold(rssm.reached) == (1000, 2)
  paths = memory_table.write(str(root))
  text = open(paths['markdown']).read()
  assert '## CueRecall' in text and '| 5 | 0.83 [' in text and '1,000 (2/3)' in text
  assert '| 15 |' in text and 'never (0/3)' in text
  assert open(paths['plot'], 'rb').read(4) == b'\x89PNG'


@pytest.mark.parametrize('task', ['CueRecall-3', 'RepeatPrevious-3'])
def test_world_model_tier_end_to_end(tmp_path, task):
  config = EXPERIMENT.get_config(f'task={task},arm=rssm,debug')
  config.run.batch_length = 16
  result = memory_probe.world_model_tier(config, updates=10, num_envs=8, steps=80, delays=(0, 3),
                                         probe_steps=100, out_dir=str(tmp_path))
  assert set(result['accuracy']) == {'0', '3'}
  assert all(0.0 <= value <= 1.0 for value in result['accuracy'].values())
  assert math.isfinite(result['loss']) and result['seconds_per_update'] > 0
  assert all(0.0 <= value <= 1.0 for value in result['reward_accuracy'].values())
  assert json.load(open(tmp_path / memory_probe.TIER_FILE))['span'] == 3
  text = '\n'.join(memory_table.tier_markdown([result]))
  family = task.partition('-')[0]
  assert f'## World model only (random-policy data): {family}' in text
  assert "| rssm | 3 | 10 | 1 |" in text
  assert f'{memory_table.CHANCE[family]:g} is chance' in text


def test_world_model_tier_table_aggregates_seeds(tmp_path):
  def result(seed, dynamics, span, accuracy, context=None):
    return {'dynamics': dynamics, 'context': context, 'span': span, 'updates': 1000,
            'seed': seed, 'accuracy': accuracy, 'seconds_per_update': 0.02 + 0.01 * seed,
            'total_seconds': 60.0 + seed}
  tiers = [result(0, 'rssm', 30, {'0': 1.0, '15': 0.5, '30': 0.4}),
           result(1, 'rssm', 30, {'0': 0.9, '15': 0.7, '30': 0.6}),
           result(0, 'transformer', 30, {'0': 1.0, '15': 1.0, '30': 0.9}, context=31),
           result(0, 'transformer', 30, {'0': 1.0, '15': 0.5, '30': 0.5}, context=8),
           result(0, 'ssm', 30, {'0': 1.0, '15': 0.5, '30': 0.5}),
           {**result(0, 'rssm', 30, {'0': 1.0, '15': 1.0, '30': 1.0}),
            'task': 'jax:CueRecallOracle-30'}]
  tiers[0]['reward_accuracy'] = {'observed': 0.5, 'imagined': 0.6}
  tiers[1]['reward_accuracy'] = {'observed': 0.5, 'imagined': 0.4}
  text = '\n'.join(memory_table.tier_markdown(tiers))
  assert ('| rssm | 30 | 1000 | 2 | 0.95 [0.90, 1.00] / 0.60 [0.50, 0.70] / 0.50 [0.40, 0.60] '
          '| 0.50 [0.40, 0.60] | 0.025 | 60 |') in text
  assert ("| transformer (context L+1) | 30 | 1000 | 1 | 1.00 / 1.00 / 0.90 | - | 0.020 | 60 |"
          in text)  # a result written before the reward choice was measured
  assert '| oracle (rssm, cue in every step) | 30 | 1000 | 1 | 1.00 / 1.00 / 1.00 |' in text
  order = [text.index(f'| {label} |') for label in memory_table.TIER_ORDER]
  assert order == sorted(order)  # rssm, the context-8 control, the L+1 Transformer, ssm, oracle
  tiers.append({**tiers[0], 'updates': 4000})  # a longer-trained series is drawn beside
  # another task family gets its own table and axes
  tiers.append({**result(0, 'rssm', 8, {'0': 1.0, '4': 0.6, '8': 0.3}),
                'task': 'jax:RepeatPrevious-8'})
  for index, tier in enumerate(tiers):
    folder = tmp_path / f'wm_{index}'
    folder.mkdir()
    (folder / memory_probe.TIER_FILE).write_text(json.dumps(tier))
  paths = memory_table.write(str(tmp_path))
  assert open(paths['world_model_plot'], 'rb').read(4) == b'\x89PNG'
  text = open(paths['markdown']).read()
  assert text.index('random-policy data): CueRecall') < text.index('data): RepeatPrevious')
  assert '| rssm | 8 | 1000 | 1 | 1.00 / 0.60 / 0.30 |' in text
  assert 'plot' not in paths  # no trained runs, no success plot
