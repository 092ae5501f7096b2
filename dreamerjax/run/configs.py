"""Default configuration, size and variant presets, and experiment files.

Fields that depend on the model size or the variant are placeholders (`None`) in the defaults;
`resolve(config)` fills them from `SIZES[config.size]` and `VARIANTS[config.variant]` unless
the user set them (on the command line, `--config.model.deter=256` always wins over a preset).
Experiment files in `experiments/` start from `base()` and set suite values. Which values each
option may take is in `validation.py`.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import types

import ml_collections
from absl import logging
from ml_collections import config_dict

from dreamerjax.run.errors import ConfigError

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
# attention window in steps (at most half the default batch_length of 64: see `validate`;
# `--config.model.context=121 --config.run.batch_length=242` reaches 120 steps back). Widths
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

# State-space dynamics (`model.dynamics=ssm`) per size: residual width, blocks, and complex
# recurrence entries per block. Each block holds about 4 x width x state (input and output maps)
# + 2 x width^2 (gated output) parameters; the sizes give 0.8-1.1 times the RSSM's dynamics
# parameter count at each preset (vector observations, 17 actions: debug 0.81, tiny 0.92, small
# 1.10, 1m 0.99, 12m 1.05, 25m-400m 0.86-0.90; tests/test_ssm.py checks debug and tiny).
SSM_SIZES = {
    'debug': dict(width=48, layers=1, state=48),
    'tiny': dict(width=128, layers=2, state=64),
    'small': dict(width=256, layers=2, state=128),
    '1m': dict(width=192, layers=2, state=96),
    '12m': dict(width=512, layers=4, state=384),
    '25m': dict(width=768, layers=4, state=384),
    '50m': dict(width=1024, layers=4, state=512),
    '100m': dict(width=1280, layers=6, state=640),
    '200m': dict(width=1792, layers=6, state=768),
    '400m': dict(width=2304, layers=8, state=1024),
}

# Network forms (`model.arch`), for the RSSM variants. `paper`: the cheaper CNN of the DreamerV3
# paper (stride-2 4x4 convolutions, the decoder's first grid one dense map of the features),
# LayerNorm, one prior layer. `public2024`: the networks of the 2024 public DreamerV3 code
# (github.com/danijar/dreamerv3 at e3f0224, `configs.yaml` and `rssm.py`): 5x5 stride-1
# convolutions each followed by a 2x2 max pool, a decoder of nearest-neighbour upsampling and 5x5
# convolutions with a sigmoid output whose first grid comes from an 8-block linear map of the
# deterministic state plus a two-layer MLP of the stochastic one, RMSNorm with a bias in every
# linear layer, two prior layers. Its CNN has about 2.6x the FLOPs of the whole `paper` update at
# 12m (docs/benchmarks.md), which is why `paper` is the default. Values here fill the
# placeholders the user left; `--config.model.norm=layer` still wins.
ARCHS = {
    'paper': dict(norm='layer', kernel=4, prior_layers=1),
    'public2024': dict(norm='rms', kernel=5, prior_layers=2),
}

# Each variant is a recipe over the same parts. Paper values; see README for sources.
VARIANTS = {
    # DreamerV3 (Hafner et al. 2023, arXiv:2301.04104v1 hyperparameter table). The actor's
    # gradient is REINFORCE for discrete actions and dynamics backprop for continuous ones, as in
    # the 2023 code (`actor_grad_disc: reinforce`, `actor_grad_cont: backprop`); the 2024 code
    # uses REINFORCE for both (`agent.actor_grad_mix=1`).
    'dreamerv3': dict(
        model=dict(latent='categorical', unimix=0.01, free_nats=1.0, dyn_scale=0.5,
                   rep_scale=0.1, reward_head='twohot'),
        agent=dict(critic_head='twohot', actor_grad_mix=-1.0, entropy=3e-4, slow_critic_reg=1.0,
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
DYNAMICS = ('rssm', 'transformer', 'ssm')
ACTOR_OBJECTIVES = ('reinforce', 'sign')

MODES = ('online', 'offline')
# How the online loop acts: 'host' steps the envs from Python (one policy call per env step);
# 'device' runs `run.loop_steps` steps of acting, env steps, replay writes and updates in one
# jitted scan (`run/device_loop.py`: envpool tasks with int32/float32 actions and jax: tasks).
LOOPS = ('host', 'device')


def _placeholder(kind):
  return config_dict.placeholder(kind)


def _section(**values) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(values)


def _env_section() -> ml_collections.ConfigDict:
  c = _section(image_size=64, from_pixels=False, sticky=False, noop_max=30)
  c.max_episode_steps = _placeholder(int)
  return c


def _run_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = _placeholder(str)         # online, or offline (from run.dataset; see MODES)
  c.dataset = ''                     # offline: a directory written by scripts/record.py
  c.steps = 100_000                  # total env steps (all envs together)
  c.train_ratio = 512.0              # replayed steps (batch * length) per env step
  c.envs = 4
  c.batch_size = 16
  c.batch_length = 64
  c.replay_capacity = 1_000_000      # env steps held
  c.prefill = 2_500                  # random-policy env steps before training
  c.log_every = 1_000                # env steps between metric writes
  c.eval_every = 10_000              # env steps between evaluations (0: never)
  c.eval_episodes = 4
  c.save_every_minutes = 10.0        # 0: after every step
  c.keep_checkpoints = 3
  c.force = False                    # start over even if the workdir holds another run
  c.compile_cache = '~/.cache/dreamerjax/xla'  # persistent XLA cache ('' disables)
  c.transfer_guard = False           # fail on implicit host<->device copies in the loop (debug)
  c.loop = 'host'                    # host: a host call per env step; device: see LOOPS
  c.loop_steps = 64                  # loop=device: steps of every env per host call
  return c


def _model_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for key in ('deter', 'hidden', 'stoch', 'classes', 'depth', 'units', 'blocks'):
    c[key] = _placeholder(int)
  c.latent = _placeholder(str)
  c.dynamics = _placeholder(str)     # rssm, transformer or ssm (see DYNAMICS)
  for key in ('width', 'layers', 'heads', 'context'):  # transformer (width, layers: and ssm)
    c[key] = _placeholder(int)
  c.state = _placeholder(int)        # ssm: complex recurrence entries per layer
  for key in ('unimix', 'free_nats', 'dyn_scale', 'rep_scale'):
    c[key] = _placeholder(float)
  c.reward_head = _placeholder(str)
  # Replayed sequences start from the latent state stored with their first step (the policy's
  # RSSM state when it acted there) instead of a fresh one (the public DreamerV3 code's
  # `replay_context`); RSSM dynamics and online runs only.
  c.replay_context = False
  c.arch = 'paper'                   # network forms, see ARCHS
  c.norm = _placeholder(str)         # layer, rms or none (from ARCHS)
  c.kernel = _placeholder(int)       # CNN kernel size (from ARCHS)
  c.prior_layers = _placeholder(int)  # hidden layers of the RSSM prior (from ARCHS)
  c.update(encoder_layers=3, decoder_layers=3, head_layers=1, act='silu',
           compute_dtype='float32', bins=255, decoder_scale=1.0, reward_scale=1.0,
           cont_scale=1.0)
  return c


def _agent_section() -> ml_collections.ConfigDict:
  c = _section(horizon=15, discount=1.0 - 1.0 / 333.0, lam=0.95)
  c.entropy = _placeholder(float)
  c.actor_layers = 3
  c.critic_layers = 3
  c.actor_unimix = 0.01
  c.critic_head = _placeholder(str)
  c.actor_grad_mix = _placeholder(float)   # 1: REINFORCE, 0: dynamics backprop, -1: auto
  c.slow_critic_rate = 0.02
  c.slow_critic_reg = _placeholder(float)
  c.slow_critic_target = _placeholder(bool)
  c.return_norm = _placeholder(str)
  c.return_norm_decay = 0.99
  c.return_norm_percentiles = (5.0, 95.0)
  # How imagination discounts by the continue head: 'prob' (its probability, as the 2024 public
  # DreamerV3 code and DreamerV2) or 'mode' (a hard 0/1 at probability 0.5, as the 2023 code).
  c.imag_cont = 'prob'
  # Weight of a second critic loss on lambda returns along the replayed sequences, with their
  # real rewards and terminals, bootstrapped by the imagined returns (the 2024 code's `repval`,
  # 0.3 there); 0 disables it.
  c.replay_critic = _placeholder(float)
  c.bc_weight = _placeholder(float)        # behaviour cloning toward the data's actions
  c.actor_objective = _placeholder(str)    # reinforce (with actor_grad_mix) or sign
  c.policy = _placeholder(str)   # see POLICIES; None: the actor-critic
  return c


def _planner_section() -> ml_collections.ConfigDict:
  """CEM planning over the learned model (PlaNet), used when agent.policy == 'cem'."""
  return _section(horizon=12, candidates=1000, elites=100, iterations=10,
                  explore=0.3,       # continuous: Gaussian action noise; discrete: epsilon
                  discount=0.99)


def _worldmodels_section() -> ml_collections.ConfigDict:
  """World Models stages (Ha & Schmidhuber 2018), run when variant == 'worldmodels'."""
  c = ml_collections.ConfigDict()
  c.episodes = 200         # random-policy episodes recorded for the VAE and MDN-RNN
  c.max_steps = 50_000     # cap on recorded env steps
  c.vae_steps = 2_000
  c.rnn_steps = 4_000
  c.batch_size = 32
  c.batch_length = 32
  c.rnn = 'lstm'           # lstm or gru
  c.mixtures = 5
  c.temperature = 1.0      # MDN sampling temperature in the dream
  c.kl_tolerance = 0.5     # free nats per latent dimension of the VAE KL
  c.generations = 60       # CMA-ES generations
  c.population = 32
  c.rollouts = 8           # dream rollouts per candidate (fitness = mean return)
  c.sigma = 0.5            # initial CMA-ES step size
  c.dream_horizon = 300
  c.ac_steps = 2_000       # updates when agent.policy == 'actor_critic'
  c.eval_episodes = 8
  return c


def _parallel_section() -> ml_collections.ConfigDict:
  c = _section(devices=0)  # devices on the data axis (0: all visible)
  # (regex over TrainState leaf paths, PartitionSpec tuple): shard matching parameters (and their
  # optimizer moments) FSDP-style, e.g. (('dynamics/.*kernel$', ('data', None)),). The first match
  # wins; unmatched leaves are replicated. See parallel.state_shardings.
  c.param_rules = ()
  return c


def _optim_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for key in ('model_lr', 'actor_lr', 'critic_lr'):
    c[key] = _placeholder(float)
  c.update(eps=1e-8, actor_critic_eps=1e-5, model_clip=1000.0, actor_critic_clip=100.0)
  # Adam on each optimizer's parameters raveled into one vector (agent._optimizer). Unset: flat
  # unless parallel.param_rules shard the moments per parameter leaf.
  c.flat = _placeholder(bool)
  return c


def base() -> ml_collections.ConfigDict:
  """Defaults shared by every suite."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = 1                      # independent agents in one program: seeds seed..seed+K-1
  c.task = 'CartPole-v1'
  c.variant = 'dreamerv3'
  c.size = '12m'
  c.env, c.run, c.model, c.agent = _env_section(), _run_section(), _model_section(), \
      _agent_section()
  c.planner, c.worldmodels = _planner_section(), _worldmodels_section()
  c.parallel, c.optim = _parallel_section(), _optim_section()
  return c


OPTIONS = {'task', 'variant', 'size', 'seed', 'debug'}
# What a run saved before one of these keys existed ran with, where that is not the key's default
# (checked on resume: common.prepare_workdir). Before `optim.flat`, moments were kept per leaf.
BEFORE_KEY = {'optim.flat': False}

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
  for that variant only (applied after the suite's, before `debug`). The task, size and seed the
  options name win over all of these (`size=12m,debug` is a short run of the 12m model)."""
  options = parse_options(arg, OPTIONS)
  config = base()
  update(config, suite)
  config.variant = options.get('variant', config.variant)
  update(config, (variants or {}).get(config.variant, {}))
  if options.get('debug'):
    update(config, DEBUG)
    update(config, debug or {})
    if 'size' in options and options['size'] != DEBUG['size']:
      logging.info("Options size=%s and debug: the model keeps size %s (debug shortens the run "
                   "and shrinks the rest).", options['size'], options['size'])
  # What the options string names wins over the suite's, the variant's and debug's values.
  for key in ('task', 'size'):
    if key in options:
      config[key] = options[key]
  if 'seed' in options:
    try:
      config.seed = int(options['seed'])
    except ValueError:
      raise ConfigError(f"experiment option seed={options['seed']!r} is not a whole number") \
          from None
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
      raise ConfigError(f'unknown experiment option {key!r}; known options: {sorted(allowed)}')
    options[key] = value.strip() if value else True
  return options


def _unknown(kind: str, name: str, known) -> ConfigError:
  close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.4)
  hint = f' Did you mean {", ".join(close)}?' if close else ''
  return ConfigError(f'unknown {kind} {name!r}.{hint} Known: {", ".join(known)}.')


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy with size and variant presets filled in where the user left placeholders."""
  if config.size not in SIZES:
    raise _unknown('size preset (--config.size)', config.size, SIZES)
  if config.variant not in VARIANTS:
    raise _unknown('variant (--config.variant)', config.variant, VARIANTS)
  if config.model.arch not in ARCHS:
    raise _unknown('network form (--config.model.arch)', config.model.arch, ARCHS)
  config = ml_collections.ConfigDict(config.to_dict())
  variant = VARIANTS[config.variant]
  dynamics = (config.model.dynamics or variant.get('model', {}).get('dynamics')
              or VARIANT_DEFAULTS['model']['dynamics'])
  # Width and layers come from the presets of the dynamics in use (every key gets a value).
  sequence_sizes = {**SSM_SIZES[config.size], **TRANSFORMER_SIZES[config.size],
                    **(SSM_SIZES[config.size] if dynamics == 'ssm' else {})}
  # Variant values override size values (DreamerV2's 32 classes), user values override both.
  layers = [{'model': {**SIZE_DEFAULTS, **SIZES[config.size], **sequence_sizes,
                       **ARCHS[config.model.arch]}},
            VARIANT_DEFAULTS, variant]
  for layer in reversed(layers):
    for section, values in layer.items():
      for key, value in values.items():
        if config[section][key] is None:
          config[section][key] = value
  if config.optim.flat is None:
    config.optim.flat = not config.parallel.param_rules
  return config
