"""The memory experiment: which dynamics backbone remembers a cue for L steps (docs/memory.md).

    python scripts/train.py --config=experiments/memory.py:task=CueRecall-30,arm=rssm \
        --workdir=runs/memory/CueRecall-30__rssm
    python scripts/train.py --config=experiments/memory.py:task=CueRecall-15,arm=transformer \
        --workdir=runs/memory/CueRecall-15__transformer
    python scripts/sweep.py --sweep=experiments/sweeps/memory.py --root=runs/memory --workers=1
    python scripts/memory_table.py --root=runs/memory

`task` is a memory-suite env (`CueRecall-L`, `RepeatPrevious-k`; the `jax:` prefix is optional).
`arm` (ARMS) picks the dynamics; the Transformer and SSM arms are matched to the RSSM in dynamics
parameters (MATCHED):

    rssm              RSSM with a block GRU, every replayed sequence from a fresh state
    transformer8      Transformer with an 8-step context (a negative control for L > 7)
    transformer       Transformer with a context of L + 1 steps
    ssm               diagonal linear recurrence (S5/LRU style)
    rssm_replay       RSSM whose replayed sequences start from the stored acting state
                      (model.replay_context)
    random            a control: the policy is never trained (the whole run is prefill)
    oracle            a control: RSSM on CueRecallOracle-L, the cue in every observation

Five seeds train side by side (`num_seeds=5`). Every arm of one L replays sequences of
`batch_length(L)` steps, at least 2 (L + 1), so that the Transformer's window fits (configs
`validate`) and no arm sees fewer steps of an episode than another.
"""

from dreamerjax.data import memory
from dreamerjax.run import configs

ARMS = ('rssm', 'transformer8', 'transformer', 'ssm', 'rssm_replay', 'random', 'oracle')
OPTIONS = {'arm'}  # accepted on top of configs.OPTIONS (sweeps read this set)

# CPU-sized: the `debug` model with the classic suite's learning rates; 5 seeds x 4 envs. The
# budget (run.steps) is what an L <= 30 run trains in about 10 minutes on 2 CPU cores
# (docs/memory.md has the measured costs). Its 437 updates are too few for any arm to learn the
# answer's reward; `--config.run.batch_size=4 --config.run.train_ratio=64` makes 3,501 smaller
# ones in the same 16k steps (about 30 minutes), the setting of the agent runs that learn at L = 5.
SUITE = {
    'task': 'jax:CueRecall-30',
    'size': 'debug',
    'num_seeds': 5,
    'run': dict(steps=16_000, train_ratio=32.0, envs=4, batch_size=16, batch_length=64,
                replay_capacity=100_000, prefill=2_000, log_every=1_000, eval_every=2_000,
                eval_episodes=16, save_every_minutes=5.0),
    'model': dict(encoder_layers=2, decoder_layers=2),
    'agent': dict(actor_layers=2, critic_layers=2),
    'optim': dict(model_lr=6e-4, actor_lr=1e-4, critic_lr=1e-3),
}

# Transformer and SSM sizes whose dynamics parameter count is within 3% of the RSSM's at each
# preset, for the memory suite's vector observations (the presets are matched for 17 actions;
# tests/test_memory_experiment.py checks these against `benchmark.dynamics_params`).
MATCHED = {'debug': {'transformer': dict(width=40), 'ssm': dict(width=56, state=56)},
           'tiny': {'transformer': dict(width=80), 'ssm': dict(width=136, state=64)}}
SHORT_CONTEXT = 8
NEVER = 2**30  # the random arm's prefill: longer than any budget (and within int32)


def batch_length(span: int) -> int:
  """Replayed sequence length for a memory span: 64, or 2 (span + 1) where that is longer."""
  return max(64, 2 * (span + 1))


def arm_values(arm: str, task: str, size: str) -> dict:
  """Config values (`configs.update` form) of `arm` on `task` at model preset `size`."""
  if arm not in ARMS:
    raise configs.ConfigError(f'unknown memory arm {arm!r}; known: {", ".join(ARMS)}')
  span = memory.span(task)
  values = {'run': {'batch_length': batch_length(span)}, 'model': {'dynamics': 'rssm'}}
  if arm in ('transformer', 'transformer8', 'ssm') and size not in MATCHED:
    raise configs.ConfigError(f'arm={arm}: no sizes matched to the RSSM for size={size}; '
                              f'known: {", ".join(MATCHED)}')
  if arm in ('transformer', 'transformer8'):
    context = span + 1 if arm == 'transformer' else SHORT_CONTEXT
    values['model'] = {'dynamics': 'transformer', 'context': context,
                       **MATCHED[size]['transformer']}
  elif arm == 'ssm':
    values['model'] = {'dynamics': 'ssm', **MATCHED[size]['ssm']}
  elif arm == 'rssm_replay':
    values['model']['replay_context'] = True
  elif arm == 'random':
    values['run']['prefill'] = NEVER  # random actions throughout; no update ever runs
  elif arm == 'oracle':
    name = task.removeprefix('jax:')
    if not name.startswith('CueRecall-'):
      raise configs.ConfigError(f'arm=oracle needs a CueRecall-L task, got {task!r}')
    values['task'] = 'jax:CueRecallOracle-' + name.removeprefix('CueRecall-')
  return values


def arm_of(config: dict) -> str:
  """The arm a run's saved config (config.json) was made with (the inverse of `arm_values`)."""
  model = config['model']
  if 'Oracle' in config['task']:
    return 'oracle'
  if config['run']['prefill'] >= NEVER:
    return 'random'
  if model['dynamics'] == 'transformer':
    return 'transformer8' if model['context'] == SHORT_CONTEXT else 'transformer'
  if model['dynamics'] == 'ssm':
    return 'ssm'
  return 'rssm_replay' if model.get('replay_context') else 'rssm'


def get_config(arg=None):
  options = configs.parse_options(arg, configs.OPTIONS | OPTIONS)
  arm = options.pop('arm', 'rssm')
  rest = ','.join(k if v is True else f'{k}={v}' for k, v in options.items())
  config = configs.experiment(rest, SUITE)
  if not config.task.startswith('jax:'):
    config.task = 'jax:' + config.task
  configs.update(config, arm_values(arm, config.task, config.size))
  return config
