"""Which values each option may take (`RULES`), and `validate`, which also checks the options
that relate to each other. Every error names the flag to change."""

from __future__ import annotations

import dataclasses
import math
import os

import ml_collections

from dreamerjax.run.configs import ACTOR_OBJECTIVES, ARCHS, DYNAMICS, LOOPS, MODES, POLICIES
from dreamerjax.run.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
  """The values one option may take: a number in `[low, high]` (an open end where `open_low` or
  `open_high`), a whole number if `integer` (and a multiple of `multiple`), one of `choices`, or
  one of the `extra` values outside the range (-1 for "auto"). `optional`: None is allowed too.
  `length`: a tuple of that many numbers, each in the range."""

  low: float | None = None
  high: float | None = None
  open_low: bool = False
  open_high: bool = False
  integer: bool = False
  multiple: int = 1
  choices: tuple = ()
  extra: tuple = ()
  optional: bool = False
  length: int = 0

  def describe(self) -> str:
    """What the rule allows, as the message after `must be`."""
    if self.choices:
      text = 'one of ' + ', '.join(str(c) for c in self.choices)
    elif self.low is not None and self.high is not None:
      text = (f'in {"(" if self.open_low else "["}{_number(self.low)}, {_number(self.high)}'
              f'{")" if self.open_high else "]"}')
    elif self.low is not None:
      text = f'{">" if self.open_low else ">="} {_number(self.low)}'
    else:
      text = f'{"<" if self.open_high else "<="} {_number(self.high)}'
    if self.multiple > 1:
      text += f' and a multiple of {self.multiple}'
    if self.extra:
      text = ' or '.join(_number(e) for e in self.extra) + ' or ' + text
    if self.length:
      text = f'{self.length} numbers, each {text}'
    return ('None or ' if self.optional else '') + text

  def allows(self, value) -> bool:
    if self.choices:
      return value in self.choices
    if value is None:
      return self.optional
    if self.length:
      return (isinstance(value, (tuple, list)) and len(value) == self.length
              and all(dataclasses.replace(self, length=0).allows(v) for v in value))
    if value in self.extra and not isinstance(value, bool):
      return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.integer and (not isinstance(value, int) or value % self.multiple):
      return False
    if not math.isfinite(value):
      return False
    return not ((self.low is not None and (value < self.low or self.open_low and value == self.low))
                or (self.high is not None
                    and (value > self.high or self.open_high and value == self.high)))

  def refused_example(self):
    """A value the rule refuses (for tests), of the option's type."""
    if self.choices:
      return 'not-' + str(self.choices[-1])
    candidates = [bound + offset for bound, offset in ((self.low, -1), (self.low, -0.5),
                                                       (self.high, 1)) if bound is not None]
    kind = int if self.integer else float
    for value in [kind(v) for v in candidates] + [float('nan')]:
      value = (value, value) if self.length else value
      if not self.allows(value):
        return value
    raise AssertionError(f'{self} refuses nothing')


def _number(value: float) -> str:
  return str(int(value)) if float(value).is_integer() else f'{value:g}'


def _count(low: int = 1, **kwargs) -> Rule:
  """A whole number >= `low`."""
  return Rule(low=low, integer=True, **kwargs)


def _positive(high: float | None = None) -> Rule:
  return Rule(low=0.0, open_low=True, high=high)


_NON_NEGATIVE = Rule(low=0.0)
_FRACTION = Rule(low=0.0, high=1.0)           # [0, 1]
_MIX = Rule(low=0.0, high=1.0, open_high=True)  # [0, 1): a share mixed in
_DISCOUNT = Rule(low=0.0, high=1.0, open_low=True)  # (0, 1]
_SEED = _count(0, high=2**30)  # plus offsets (seeds, evaluations) it must still fit in int32

# The valid values of every option with a range or a set of choices, in one table: `validate`
# checks each (naming the flag), tests/test_configs.py checks that every numeric option of every
# variant has a rule here and that each rule refuses a value outside it. Checks that relate
# several options are in `_cross_field_problems`.
RULES: dict[str, Rule] = {
    'seed': _SEED, 'num_seeds': _count(1),
    'env.image_size': _count(16, multiple=16), 'env.noop_max': _count(0),
    'env.max_episode_steps': _count(1, optional=True),
    'run.mode': Rule(choices=MODES), 'run.loop': Rule(choices=LOOPS),
    'run.loop_steps': _count(1), 'run.steps': _count(1), 'run.train_ratio': _positive(),
    'run.envs': _count(1), 'run.batch_size': _count(1), 'run.batch_length': _count(2),
    'run.replay_capacity': _count(1), 'run.prefill': _count(0), 'run.log_every': _count(1),
    'run.eval_every': _count(0), 'run.eval_episodes': _count(1),
    'run.save_every_minutes': _NON_NEGATIVE, 'run.keep_checkpoints': _count(1),
    **{f'model.{key}': _count(1) for key in ('deter', 'hidden', 'stoch', 'classes', 'depth',
                                             'units', 'blocks', 'width', 'layers', 'heads',
                                             'context', 'state', 'kernel', 'prior_layers')},
    'model.arch': Rule(choices=tuple(ARCHS)),
    'model.latent': Rule(choices=('categorical', 'gaussian')),
    'model.dynamics': Rule(choices=DYNAMICS), 'model.unimix': _MIX,
    **{f'model.{key}': _NON_NEGATIVE for key in ('free_nats', 'dyn_scale', 'rep_scale',
                                                 'decoder_scale', 'reward_scale', 'cont_scale')},
    'model.reward_head': Rule(choices=('twohot', 'mse')),
    'model.replay_context': Rule(choices=(False, True)),
    **{f'model.{key}': _count(0) for key in ('encoder_layers', 'decoder_layers', 'head_layers')},
    'model.norm': Rule(choices=('layer', 'rms', 'none')),
    'model.act': Rule(choices=('silu', 'elu', 'relu', 'tanh')),
    'model.compute_dtype': Rule(choices=('float32', 'bfloat16')), 'model.bins': _count(2),
    'agent.horizon': _count(1), 'agent.discount': _DISCOUNT, 'agent.lam': _FRACTION,
    'agent.entropy': _NON_NEGATIVE, 'agent.actor_layers': _count(0),
    'agent.critic_layers': _count(0), 'agent.actor_unimix': _MIX,
    'agent.critic_head': Rule(choices=('twohot', 'mse')),
    'agent.actor_grad_mix': Rule(low=0.0, high=1.0, extra=(-1.0,)),
    'agent.slow_critic_rate': _DISCOUNT, 'agent.slow_critic_reg': _NON_NEGATIVE,
    'agent.return_norm': Rule(choices=('percentile', 'none')), 'agent.return_norm_decay': _MIX,
    'agent.return_norm_percentiles': Rule(low=0.0, high=100.0, length=2),
    'agent.imag_cont': Rule(choices=('prob', 'mode')), 'agent.replay_critic': _NON_NEGATIVE,
    'agent.bc_weight': _NON_NEGATIVE, 'agent.actor_objective': Rule(choices=ACTOR_OBJECTIVES),
    'agent.policy': Rule(choices=POLICIES),
    **{f'planner.{key}': _count(1) for key in ('horizon', 'candidates', 'elites', 'iterations')},
    'planner.explore': _FRACTION, 'planner.discount': _DISCOUNT,
    **{f'worldmodels.{key}': _count(1) for key in (
        'episodes', 'max_steps', 'vae_steps', 'rnn_steps', 'batch_size', 'mixtures',
        'generations', 'rollouts', 'dream_horizon', 'ac_steps', 'eval_episodes')},
    'worldmodels.batch_length': _count(2), 'worldmodels.population': _count(4),
    'worldmodels.rnn': Rule(choices=('lstm', 'gru')), 'worldmodels.temperature': _positive(),
    'worldmodels.kl_tolerance': _NON_NEGATIVE, 'worldmodels.sigma': _positive(),
    'parallel.devices': _count(0),
    **{f'optim.{key}': _positive(high=1.0) for key in ('model_lr', 'actor_lr', 'critic_lr')},
    **{f'optim.{key}': _positive() for key in ('eps', 'actor_critic_eps', 'model_clip',
                                               'actor_critic_clip')},
}


def lookup(config: ml_collections.ConfigDict, path: str):
  """The value of a dotted option path (`run.steps`)."""
  for key in path.split('.'):
    config = config[key]
  return config


def all_options(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted paths of every option of `config`."""
  paths = []
  for key in config.keys():
    value = config[key]
    paths.extend(all_options(value, f'{prefix}{key}.') if isinstance(
        value, ml_collections.ConfigDict) else [f'{prefix}{key}'])
  return paths


def numeric_options(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted paths of every option of `config` that holds (or is typed to hold) numbers."""
  paths = []
  for key in config.keys():
    value, path = config[key], f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(numeric_options(value, path + '.'))
      continue
    kind = config.get_type(key)
    numbers = isinstance(value, (tuple, list)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if numbers or (kind in (int, float) and kind is not bool):
      paths.append(path)
  return paths


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError naming the flags to change for values that cannot work on `num_devices`
  devices of the data axis (over all processes: each process steps its share of the envs): each
  option against its rule in `RULES`, then the checks that relate options to each other."""
  problems = [f'--config.{path} must be {rule.describe()} (got {lookup(config, path)!r})'
              for path, rule in RULES.items() if not rule.allows(lookup(config, path))]
  if not problems:  # the relations assume that each value is in its range
    problems = _cross_field_problems(config, num_devices)
  if problems:
    raise ConfigError('invalid config: ' + '; '.join(problems))


def _cross_field_problems(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  from dreamerjax.run import parallel  # imports jax; keep this module light

  run, model, agent = config.run, config.model, config.agent
  problems = list(parallel.check_rules(config.parallel.param_rules))
  if config.optim.flat and config.parallel.param_rules:
    problems.append('--config.optim.flat=True keeps each optimizer\'s Adam moments in one vector, '
                    'which --config.parallel.param_rules cannot shard like the parameters; set '
                    '--config.optim.flat=False or leave it unset')
  for name in ('batch_size', 'envs'):
    if run[name] % num_devices:
      problems.append(f'--config.run.{name}={run[name]} is not divisible by the {num_devices} '
                      f'devices of the data axis; use a multiple of {num_devices}')
  per_env = run.replay_capacity // run.envs
  if per_env < run.batch_length:
    problems.append(f'--config.run.replay_capacity={run.replay_capacity} holds {per_env} steps per '
                    f'env, fewer than one sequence of batch_length={run.batch_length}; raise it to '
                    f'at least {run.batch_length * run.envs}')
  if run.replay_capacity < run.batch_size * run.batch_length:
    problems.append(f'--config.run.replay_capacity={run.replay_capacity} is smaller than one batch '
                    f'({run.batch_size}x{run.batch_length}); raise it')
  if model.arch == 'public2024' and (model.dynamics != 'rssm' or model.deter % 8):
    problems.append('--config.model.arch=public2024 needs --config.model.dynamics=rssm and a '
                    f'--config.model.deter divisible by 8 (got {model.dynamics}, {model.deter}): '
                    'its image decoder reads the deterministic state in 8 blocks')
  if model.deter % model.blocks:
    problems.append(f'--config.model.deter={model.deter} must be divisible by '
                    f'--config.model.blocks={model.blocks}')
  low, high = agent.return_norm_percentiles
  if low >= high:
    problems.append(f'--config.agent.return_norm_percentiles={agent.return_norm_percentiles} must '
                    'be (low, high) with low < high')
  if config.planner.elites > config.planner.candidates:
    problems.append(f'--config.planner.elites={config.planner.elites} must not exceed '
                    f'--config.planner.candidates={config.planner.candidates}')
  return problems + _policy_problems(config) + _dynamics_problems(config)


def _policy_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Policies that only some variants (or modes) can train."""
  agent, run, problems = config.agent, config.run, []
  if agent.policy == 'cmaes' and config.variant != 'worldmodels':
    problems.append('--config.agent.policy=cmaes needs --config.variant=worldmodels')
  if config.variant == 'worldmodels':
    if agent.policy not in ('cmaes', 'actor_critic'):
      problems.append(f'--config.agent.policy must be cmaes or actor_critic for worldmodels '
                      f'(got {agent.policy!r})')
    if config.model.latent != 'gaussian':
      problems.append('--config.model.latent must be gaussian for worldmodels (the VAE latent)')
  if run.mode == 'offline' and config.num_seeds != 1:
    problems.append('--config.num_seeds must be 1 with --config.run.mode=offline')
  if run.loop == 'device' and config.num_seeds != 1:
    problems.append('--config.num_seeds must be 1 with --config.run.loop=device (one seed on one '
                    'device; use run.loop=host for several)')
  if run.mode == 'offline' and not run.dataset:
    problems.append('--config.run.mode=offline needs --config.run.dataset=<directory> (record one '
                    'with scripts/record.py)')
  elif run.mode == 'offline' and not os.path.isfile(os.path.join(run.dataset, 'manifest.json')):
    problems.append(f'--config.run.dataset={run.dataset!r} holds no manifest.json; record a '
                    'dataset there with scripts/record.py')
  return problems


def _dynamics_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Checks of the dynamics keys: Transformer and SSM sizes, the replay context."""
  model, run, problems = config.model, config.run, []
  if model.replay_context and (model.dynamics != 'rssm' or run.mode != 'online'
                               or config.variant == 'worldmodels'):
    problems.append(f'--config.model.replay_context=True needs --config.model.dynamics=rssm and '
                    f'--config.run.mode=online (got dynamics={model.dynamics}, mode={run.mode}, '
                    f'variant={config.variant}): the stored state is the RSSM state of acting')
  if model.dynamics == 'rssm':
    return problems
  if model.latent != 'categorical':
    problems.append(f'--config.model.latent must be categorical with '
                    f'--config.model.dynamics={model.dynamics}')
  if model.dynamics != 'transformer':
    return problems
  if model.width % model.heads or (model.width // model.heads) % 2:
    problems.append(f'--config.model.width={model.width} must be divisible by '
                    f'--config.model.heads={model.heads} into an even head size (rotary '
                    'positions rotate pairs)')
  if run.batch_length < 2 * model.context:
    # Every training sequence starts from a fresh state. With T <= C steps, every window the
    # model attends over holds that start token, so it never learns the mid-episode windows
    # it meets after C steps of a real episode (there the features drift out of distribution).
    problems.append(f'--config.run.batch_length={run.batch_length} must be at least twice '
                    f'--config.model.context={model.context} with Transformer dynamics, so '
                    'that most training windows lie wholly inside an episode: raise '
                    'batch_length or lower context')
  return problems
