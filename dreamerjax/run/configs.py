"""Default configuration, size and variant presets, and validation.

Fields that depend on the model size or the variant are placeholders (`None`) in the defaults;
`resolve(config)` fills them from `SIZES[config.size]` and `VARIANTS[config.variant]` unless
the user set them (on the command line, `--config.model.deter=256` always wins over a preset).
Experiment files in `experiments/` start from `base()` and set suite values.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import types

import ml_collections
from ml_collections import config_dict

# Public DreamerV3 shapes (32 stochastic groups for all). `tiny` and `small` are CPU presets.
SIZES = {
    'debug': dict(deter=64, hidden=32, classes=4, stoch=4, depth=4, units=32, blocks=2),
    'tiny': dict(deter=256, hidden=64, classes=8, stoch=16, depth=8, units=64, blocks=4),
    'small': dict(deter=512, hidden=128, classes=16, stoch=16, depth=16, units=128, blocks=8),
    '1m': dict(deter=512, hidden=64, classes=4, depth=4, units=64),
    '12m': dict(deter=2048, hidden=256, classes=16, depth=16, units=256),
    '25m': dict(deter=3072, hidden=384, classes=24, depth=24, units=384),
    '50m': dict(deter=4096, hidden=512, classes=32, depth=32, units=512),
    '100m': dict(deter=6144, hidden=768, classes=48, depth=48, units=768),
    '200m': dict(deter=8192, hidden=1024, classes=64, depth=64, units=1024),
    '400m': dict(deter=12288, hidden=1536, classes=96, depth=96, units=1536),
}
SIZE_DEFAULTS = dict(stoch=32, blocks=8)
# Transformer dynamics (`model.dynamics=transformer`) per size: width, blocks, heads, and the
# attention window in steps (at most half the default batch_length of 64: see `validate`). Widths
# give about the RSSM's dynamics parameter count (see
# `make bench`, benchmarks/dynamics.json).
TRANSFORMER_SIZES = {
    'debug': dict(width=32, layers=1, heads=2, context=8),
    'tiny': dict(width=64, layers=2, heads=4, context=8),
    'small': dict(width=128, layers=2, heads=4, context=16),
    '1m': dict(width=128, layers=2, heads=4, context=32),
    '12m': dict(width=256, layers=4, heads=8, context=32),
    '25m': dict(width=384, layers=4, heads=8, context=32),
    '50m': dict(width=512, layers=4, heads=8, context=32),
    '100m': dict(width=768, layers=6, heads=12, context=32),
    '200m': dict(width=1024, layers=6, heads=16, context=32),
    '400m': dict(width=1536, layers=8, heads=16, context=32),
}

# Each variant is a recipe over the same parts. Paper values; see README for sources.
VARIANTS = {
    # DreamerV3 (Hafner et al. 2023, arXiv:2301.04104v1 hyperparameter table).
    'dreamerv3': dict(
        model=dict(latent='categorical', unimix=0.01, free_nats=1.0, dyn_scale=0.5,
                   rep_scale=0.1, reward_head='twohot'),
        agent=dict(critic_head='twohot', actor_grad_mix=1.0, entropy=3e-4, slow_critic_reg=1.0,
                   slow_critic_target=False, return_norm='percentile', replay_critic=0.3),
        optim=dict(model_lr=1e-4, actor_lr=3e-5, critic_lr=3e-5)),
    # DreamerV2 (Hafner et al. 2021): 32x32 categorical, KL balancing 0.8, mixed actor gradients
    # (REINFORCE for discrete actions, dynamics backprop for continuous), target critic.
    'dreamerv2': dict(
        model=dict(latent='categorical', classes=32, unimix=0.0, free_nats=0.0, dyn_scale=0.8,
                   rep_scale=0.2, reward_head='mse'),
        agent=dict(critic_head='mse', actor_grad_mix=-1.0, entropy=1e-3, slow_critic_reg=0.0,
                   slow_critic_target=True, return_norm='none'),
        optim=dict(model_lr=2e-4, actor_lr=4e-5, critic_lr=1e-4)),
    # DreamerV1 (Hafner et al. 2020): Gaussian latent, free nats 3, dynamics backprop for the actor.
    'dreamerv1': dict(
        model=dict(latent='gaussian', unimix=0.0, free_nats=3.0, dyn_scale=1.0, rep_scale=1.0,
                   reward_head='mse'),
        agent=dict(critic_head='mse', actor_grad_mix=0.0, entropy=0.0, slow_critic_reg=0.0,
                   slow_critic_target=False, return_norm='none'),
        optim=dict(model_lr=6e-4, actor_lr=8e-5, critic_lr=8e-5)),
    # PlaNet (Hafner et al. 2019): Gaussian RSSM, free nats 3, no policy network: actions by CEM
    # planning over the learned model (the `planner` section). The actor-critic keys are unused.
    'planet': dict(
        model=dict(latent='gaussian', unimix=0.0, free_nats=3.0, dyn_scale=1.0, rep_scale=1.0,
                   reward_head='mse'),
        agent=dict(policy='cem', critic_head='mse', actor_grad_mix=0.0, entropy=0.0,
                   slow_critic_reg=0.0, slow_critic_target=False, return_norm='none'),
        optim=dict(model_lr=1e-3, actor_lr=8e-5, critic_lr=8e-5)),
    # World Models (Ha & Schmidhuber 2018): VAE + MDN-RNN trained in stages from random rollouts,
    # a linear controller on [z, h] trained in the dream with CMA-ES (the `worldmodels` section).
    # `model.stoch` is the size of z, `model.deter` the RNN state.
    'worldmodels': dict(
        model=dict(latent='gaussian', unimix=0.0, free_nats=0.0, dyn_scale=1.0, rep_scale=1.0,
                   reward_head='mse'),
        agent=dict(policy='cmaes', critic_head='mse', actor_grad_mix=-1.0, entropy=1e-3,
                   slow_critic_reg=0.0, slow_critic_target=True, return_norm='none'),
        optim=dict(model_lr=1e-3, actor_lr=1e-4, critic_lr=1e-4)),
}
# How the policy is learned (`agent.policy`): None or 'actor_critic' (Dreamer), 'cem' (PlaNet
# planning), 'cmaes' (World Models controller evolved in the dream).
POLICIES = (None, 'actor_critic', 'cem', 'cmaes')

# STORM (Zhang et al. 2023): DreamerV3's recipe with Transformer dynamics, learned online.
VARIANTS['storm'] = {**VARIANTS['dreamerv3'],
                     'model': {**VARIANTS['dreamerv3']['model'], 'dynamics': 'transformer'}}
# DreamerV4 (Hafner et al. 2025): Transformer dynamics and a policy learned offline from recorded
# data only, with a behaviour-cloning term and the sign-of-advantage policy objective.
VARIANTS['dreamerv4'] = {
    **VARIANTS['storm'], 'run': dict(mode='offline'),
    'agent': {**VARIANTS['dreamerv3']['agent'], 'bc_weight': 1.0, 'actor_objective': 'sign'}}
# Values a variant may set; used where it does not.
VARIANT_DEFAULTS = {'model': dict(dynamics='rssm'), 'run': dict(mode='online'),
                    'agent': dict(bc_weight=0.0, actor_objective='reinforce', replay_critic=0.0)}
DYNAMICS = ('rssm', 'transformer')
ACTOR_OBJECTIVES = ('reinforce', 'sign')

MODES = ('online', 'offline')


def _placeholder(kind):
  return config_dict.placeholder(kind)


def base() -> ml_collections.ConfigDict:
  """Defaults shared by every suite."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = 1                      # independent agents in one program: seeds seed..seed+K-1
  c.task = 'CartPole-v1'
  c.variant = 'dreamerv3'
  c.size = '12m'

  c.env = ml_collections.ConfigDict()
  c.env.image_size = 64
  c.env.from_pixels = False
  c.env.sticky = False
  c.env.noop_max = 30
  c.env.max_episode_steps = _placeholder(int)

  c.run = ml_collections.ConfigDict()
  c.run.mode = _placeholder(str)       # online, or offline (from run.dataset; see MODES)
  c.run.dataset = ''                   # offline: a directory written by scripts/record.py
  c.run.steps = 100_000                # total env steps (all envs together)
  c.run.train_ratio = 512.0           # replayed steps (batch * length) per env step
  c.run.envs = 4
  c.run.batch_size = 16
  c.run.batch_length = 64
  c.run.replay_capacity = 1_000_000    # env steps held
  c.run.prefill = 2_500                # random-policy env steps before training
  c.run.log_every = 1_000              # env steps between metric writes
  c.run.eval_every = 10_000            # env steps between evaluations (0: never)
  c.run.eval_episodes = 4
  c.run.save_every_minutes = 10.0
  c.run.keep_checkpoints = 3
  c.run.force = False                  # start over even if the workdir holds another run
  c.run.compile_cache = '~/.cache/dreamerjax/xla'  # persistent XLA cache ('' disables)
  c.run.transfer_guard = False         # fail on implicit host<->device copies in the loop (debug)

  c.model = ml_collections.ConfigDict()
  for key in ('deter', 'hidden', 'stoch', 'classes', 'depth', 'units', 'blocks'):
    c.model[key] = _placeholder(int)
  c.model.latent = _placeholder(str)
  c.model.dynamics = _placeholder(str)   # rssm or transformer (see DYNAMICS)
  for key in ('width', 'layers', 'heads', 'context'):  # transformer dynamics
    c.model[key] = _placeholder(int)
  for key in ('unimix', 'free_nats', 'dyn_scale', 'rep_scale'):
    c.model[key] = _placeholder(float)
  c.model.reward_head = _placeholder(str)
  c.model.encoder_layers = 3
  c.model.decoder_layers = 3
  c.model.head_layers = 1
  c.model.norm = 'layer'
  c.model.act = 'silu'
  c.model.kernel = 4
  c.model.compute_dtype = 'float32'
  c.model.bins = 255
  c.model.decoder_scale = 1.0
  c.model.reward_scale = 1.0
  c.model.cont_scale = 1.0

  c.agent = ml_collections.ConfigDict()
  c.agent.horizon = 15
  c.agent.discount = 1.0 - 1.0 / 333.0
  c.agent.lam = 0.95
  c.agent.entropy = _placeholder(float)
  c.agent.actor_layers = 3
  c.agent.critic_layers = 3
  c.agent.actor_unimix = 0.01
  c.agent.critic_head = _placeholder(str)
  c.agent.actor_grad_mix = _placeholder(float)   # 1: REINFORCE, 0: dynamics backprop, -1: auto
  c.agent.slow_critic_rate = 0.02
  c.agent.slow_critic_reg = _placeholder(float)
  c.agent.slow_critic_target = _placeholder(bool)
  c.agent.return_norm = _placeholder(str)
  c.agent.return_norm_decay = 0.99
  c.agent.return_norm_percentiles = (5.0, 95.0)
  # How imagination discounts by the continue head: 'prob' (its probability, as the 2024 public
  # DreamerV3 code and DreamerV2) or 'mode' (a hard 0/1 at probability 0.5, as the 2023 code).
  c.agent.imag_cont = 'prob'
  # Weight of a second critic loss on lambda returns along the replayed sequences, with their
  # real rewards and terminals, bootstrapped by the imagined returns (the 2024 code's `repval`,
  # 0.3 there); 0 disables it.
  c.agent.replay_critic = _placeholder(float)
  c.agent.bc_weight = _placeholder(float)        # behaviour cloning toward the data's actions
  c.agent.actor_objective = _placeholder(str)    # reinforce (with actor_grad_mix) or sign
  c.agent.policy = _placeholder(str)   # see POLICIES; None: the actor-critic

  # CEM planning over the learned model (PlaNet), used when agent.policy == 'cem'.
  c.planner = ml_collections.ConfigDict()
  c.planner.horizon = 12
  c.planner.candidates = 1000
  c.planner.elites = 100
  c.planner.iterations = 10
  c.planner.explore = 0.3              # continuous: Gaussian action noise; discrete: epsilon
  c.planner.discount = 0.99

  # World Models stages (Ha & Schmidhuber 2018), run when variant == 'worldmodels'.
  c.worldmodels = ml_collections.ConfigDict()
  c.worldmodels.episodes = 200         # random-policy episodes recorded for the VAE and MDN-RNN
  c.worldmodels.max_steps = 50_000     # cap on recorded env steps
  c.worldmodels.vae_steps = 2_000
  c.worldmodels.rnn_steps = 4_000
  c.worldmodels.batch_size = 32
  c.worldmodels.batch_length = 32
  c.worldmodels.rnn = 'lstm'           # lstm or gru
  c.worldmodels.mixtures = 5
  c.worldmodels.temperature = 1.0      # MDN sampling temperature in the dream
  c.worldmodels.kl_tolerance = 0.5     # free nats per latent dimension of the VAE KL
  c.worldmodels.generations = 60       # CMA-ES generations
  c.worldmodels.population = 32
  c.worldmodels.rollouts = 8           # dream rollouts per candidate (fitness = mean return)
  c.worldmodels.sigma = 0.5            # initial CMA-ES step size
  c.worldmodels.dream_horizon = 300
  c.worldmodels.ac_steps = 2_000       # updates when agent.policy == 'actor_critic'
  c.worldmodels.eval_episodes = 8

  c.parallel = ml_collections.ConfigDict()
  c.parallel.devices = 0                # devices on the data axis (0: all visible)
  # (regex over TrainState leaf paths, PartitionSpec tuple): shard matching parameters (and their
  # optimizer moments) FSDP-style, e.g. (('dynamics/.*kernel$', ('data', None)),). The first match
  # wins; unmatched leaves are replicated. See parallel.state_shardings.
  c.parallel.param_rules = ()

  c.optim = ml_collections.ConfigDict()
  c.optim.model_lr = _placeholder(float)
  c.optim.actor_lr = _placeholder(float)
  c.optim.critic_lr = _placeholder(float)
  c.optim.eps = 1e-8
  c.optim.actor_critic_eps = 1e-5
  c.optim.model_clip = 1000.0
  c.optim.actor_critic_clip = 100.0
  return c


OPTIONS = {'task', 'variant', 'size', 'seed', 'debug'}

# `debug` shrinks a run to seconds: for tests and for checking that a command works.
DEBUG = {
    'size': 'debug',
    'run': dict(steps=400, prefill=100, train_ratio=64.0, batch_size=4, batch_length=16,
                replay_capacity=4_000, log_every=100, eval_every=0, eval_episodes=1),
    'agent': dict(horizon=4, actor_layers=1, critic_layers=1),
    'model': dict(encoder_layers=1, decoder_layers=1, bins=31),
    'planner': dict(horizon=4, candidates=32, elites=4, iterations=2),
    'worldmodels': dict(episodes=8, max_steps=800, vae_steps=20, rnn_steps=20, batch_size=4,
                        batch_length=16, generations=2, population=8, rollouts=2,
                        dream_horizon=20, ac_steps=10, eval_episodes=2),
}


def update(config: ml_collections.ConfigDict, values: dict) -> None:
  """Nested in-place update: `{'run': {'steps': 10}}` sets `config.run.steps`."""
  for key, value in values.items():
    if key not in config:
      raise KeyError(f'unknown config key {key!r}')
    if isinstance(value, dict):
      update(config[key], value)
    else:
      config[key] = value


def experiment(arg: str | None, suite: dict, debug: dict | None = None,
               variants: dict | None = None) -> ml_collections.ConfigDict:
  """Builds a suite's config from `base()`, the suite's values and the options string `arg`
  (`task=...,variant=...,size=...,seed=...,debug`). `variants` maps a variant name to suite values
  for that variant only (applied after the suite's, before `debug`)."""
  options = parse_options(arg, OPTIONS)
  config = base()
  update(config, suite)
  for key in ('task', 'variant', 'size'):
    if key in options:
      config[key] = options[key]
  if 'seed' in options:
    config.seed = int(options['seed'])
  update(config, (variants or {}).get(config.variant, {}))
  if options.get('debug'):
    update(config, DEBUG)
    update(config, debug or {})
  return config


def load_file(path: str) -> types.ModuleType:
  """Imports a Python file by path (experiment and sweep files are not packages)."""
  spec = importlib.util.spec_from_file_location(
      f'_dreamerjax_{os.path.splitext(os.path.basename(path))[0]}', path)
  if spec is None or spec.loader is None or not os.path.exists(path):
    raise FileNotFoundError(f'cannot load {path!r}: no such Python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_options(arg: str | None, allowed: set[str]) -> dict[str, str | bool]:
  """Parses `task=Pong-v5,size=12m,debug` into a dict; bare words become True."""
  options = {}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in allowed:
      raise ValueError(f'unknown experiment option {key!r}; known options: {sorted(allowed)}')
    options[key] = value.strip() if value else True
  return options


def _unknown(kind: str, name: str, known) -> ValueError:
  close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.4)
  hint = f' Did you mean {", ".join(close)}?' if close else ''
  return ValueError(f'unknown {kind} {name!r}.{hint} Known: {", ".join(known)}.')


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy with size and variant presets filled in where the user left placeholders."""
  if config.size not in SIZES:
    raise _unknown('size preset (--config.size)', config.size, SIZES)
  if config.variant not in VARIANTS:
    raise _unknown('variant (--config.variant)', config.variant, VARIANTS)
  config = ml_collections.ConfigDict(config.to_dict())
  variant = VARIANTS[config.variant]
  # Variant values override size values (DreamerV2's 32 classes), user values override both.
  layers = [{'model': {**SIZE_DEFAULTS, **SIZES[config.size], **TRANSFORMER_SIZES[config.size]}},
            VARIANT_DEFAULTS, variant]
  for layer in reversed(layers):
    for section, values in layer.items():
      for key, value in values.items():
        if config[section][key] is None:
          config[section][key] = value
  return config


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ValueError naming the flag to change for values that cannot work on `num_devices`
  devices of the data axis (over all processes: each process steps its share of the envs)."""
  from dreamerjax.run import parallel  # imports jax; keep this module light

  run = config.run
  problems = []
  if config.num_seeds < 1:
    problems.append(f'--config.num_seeds must be >= 1 (got {config.num_seeds})')
  problems.extend(parallel.check_rules(config.parallel.param_rules))
  if config.run.mode not in MODES:
    problems.append(f'--config.run.mode={run.mode!r} is not one of {MODES}')
  if run.train_ratio <= 0:
    problems.append(f'--config.run.train_ratio must be > 0 (got {run.train_ratio}); it counts '
                    'replayed steps per env step')
  if run.steps <= 0:
    problems.append(f'--config.run.steps must be > 0 (got {run.steps})')
  if run.envs < 1:
    problems.append(f'--config.run.envs must be >= 1 (got {run.envs})')
  if run.batch_size < 1 or run.batch_length < 2:
    problems.append('--config.run.batch_size must be >= 1 and --config.run.batch_length >= 2')
  if run.batch_size % num_devices:
    problems.append(f'--config.run.batch_size={run.batch_size} is not divisible by the '
                    f'{num_devices} devices of the data axis; use a multiple of {num_devices}')
  if run.envs % num_devices:
    problems.append(f'--config.run.envs={run.envs} is not divisible by the {num_devices} devices '
                    f'of the data axis; use a multiple of {num_devices}')
  per_env = run.replay_capacity // max(run.envs, 1)
  if per_env < run.batch_length:
    problems.append(f'--config.run.replay_capacity={run.replay_capacity} holds {per_env} steps per '
                    f'env, fewer than one sequence of batch_length={run.batch_length}; raise it to '
                    f'at least {run.batch_length * run.envs}')
  if run.replay_capacity < run.batch_size * run.batch_length:
    problems.append(f'--config.run.replay_capacity={run.replay_capacity} is smaller than one batch '
                    f'({run.batch_size}x{run.batch_length}); raise it')
  model, agent = config.model, config.agent
  if model.latent not in ('categorical', 'gaussian'):
    problems.append(f'--config.model.latent must be categorical or gaussian (got {model.latent!r})')
  for name, value in (('reward_head', model.reward_head), ('critic_head', agent.critic_head)):
    if value not in ('twohot', 'mse'):
      problems.append(f'--config.*.{name} must be twohot or mse (got {value!r})')
  if model.deter % model.blocks:
    problems.append(f'--config.model.deter={model.deter} must be divisible by '
                    f'--config.model.blocks={model.blocks}')
  if not 0.0 <= agent.lam <= 1.0 or not 0.0 < agent.discount <= 1.0:
    problems.append('--config.agent.lam must be in [0, 1] and --config.agent.discount in (0, 1]')
  if agent.imag_cont not in ('prob', 'mode'):
    problems.append(f'--config.agent.imag_cont must be prob or mode (got {agent.imag_cont!r})')
  if agent.replay_critic < 0:
    problems.append(f'--config.agent.replay_critic must be >= 0 (got {agent.replay_critic})')
  if agent.return_norm not in ('percentile', 'none'):
    problems.append(f'--config.agent.return_norm must be percentile or none '
                    f'(got {agent.return_norm!r})')
  if agent.get('policy') not in POLICIES:
    problems.append(f'--config.agent.policy must be one of {POLICIES[1:]} (got {agent.policy!r})')
  if agent.get('policy') == 'cem':
    plan = config.planner
    if min(plan.horizon, plan.candidates, plan.elites, plan.iterations) < 1:
      problems.append('--config.planner.horizon, .candidates, .elites and .iterations must be >= 1')
    if plan.elites > plan.candidates:
      problems.append(f'--config.planner.elites={plan.elites} must not exceed '
                      f'--config.planner.candidates={plan.candidates}')
    if not 0.0 <= plan.explore <= 1.0:
      problems.append(f'--config.planner.explore must be in [0, 1] (got {plan.explore})')
  if agent.get('policy') == 'cmaes' and config.variant != 'worldmodels':
    problems.append('--config.agent.policy=cmaes needs --config.variant=worldmodels')
  if config.variant == 'worldmodels':
    wm = config.worldmodels
    if agent.get('policy') not in ('cmaes', 'actor_critic'):
      problems.append(f'--config.agent.policy must be cmaes or actor_critic for worldmodels '
                      f'(got {agent.policy!r})')
    if wm.rnn not in ('lstm', 'gru'):
      problems.append(f'--config.worldmodels.rnn must be lstm or gru (got {wm.rnn!r})')
    if wm.mixtures < 1 or wm.temperature <= 0:
      problems.append('--config.worldmodels.mixtures must be >= 1 and '
                      '--config.worldmodels.temperature > 0')
    if wm.population < 4 or wm.generations < 1 or wm.rollouts < 1:
      problems.append('--config.worldmodels.population must be >= 4, .generations and '
                      '.rollouts >= 1')
    if model.latent != 'gaussian':
      problems.append('--config.model.latent must be gaussian for worldmodels (the VAE latent)')
  problems.extend(_transformer_problems(config))
  if model.compute_dtype not in ('float32', 'bfloat16'):
    problems.append('--config.model.compute_dtype must be float32 or bfloat16')
  if problems:
    raise ValueError('invalid config:\n  - ' + '\n  - '.join(problems))


def _transformer_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Checks of the Transformer dynamics and offline-mode keys."""
  model, agent, run = config.model, config.agent, config.run
  problems = []
  if model.dynamics not in DYNAMICS:
    problems.append(f'--config.model.dynamics must be one of {DYNAMICS} (got {model.dynamics!r})')
  if model.dynamics == 'transformer':
    if model.latent != 'categorical':
      problems.append('--config.model.latent must be categorical with '
                      '--config.model.dynamics=transformer')
    if min(model.width, model.layers, model.heads, model.context) < 1:
      problems.append('--config.model.width, .layers, .heads and .context must be >= 1')
    elif model.width % model.heads or (model.width // model.heads) % 2:
      problems.append(f'--config.model.width={model.width} must be divisible by '
                      f'--config.model.heads={model.heads} into an even head size (rotary '
                      'positions rotate pairs)')
    if model.context >= 1 and run.batch_length < 2 * model.context:
      # Every training sequence starts from a fresh state. With T <= C steps, every window the
      # model attends over holds that start token, so it never learns the mid-episode windows
      # it meets after C steps of a real episode (there the features drift out of distribution).
      problems.append(f'--config.run.batch_length={run.batch_length} must be at least twice '
                      f'--config.model.context={model.context} with Transformer dynamics, so '
                      'that most training windows lie wholly inside an episode: raise '
                      'batch_length or lower context')
  if agent.actor_objective not in ACTOR_OBJECTIVES:
    problems.append(f'--config.agent.actor_objective must be one of {ACTOR_OBJECTIVES} '
                    f'(got {agent.actor_objective!r})')
  if agent.bc_weight < 0:
    problems.append(f'--config.agent.bc_weight must be >= 0 (got {agent.bc_weight})')
  if run.mode == 'offline' and config.num_seeds != 1:
    problems.append('--config.num_seeds must be 1 with --config.run.mode=offline')
  if run.mode == 'offline' and not run.dataset:
    problems.append('--config.run.mode=offline needs --config.run.dataset=<directory> (record one '
                    'with scripts/record.py)')
  elif run.mode == 'offline' and not os.path.isfile(os.path.join(run.dataset, 'manifest.json')):
    problems.append(f'--config.run.dataset={run.dataset!r} holds no manifest.json; record a '
                    'dataset there with scripts/record.py')
  return problems
