"""What every training mode shares: the config check, the workdir, envs, the replay spec, the
jitted programs, evaluation, checkpoints, the logger and the stop flag.

The modes (`online`, `offline`, `worldmodels`) build on this module and `train.run` picks one;
nothing here imports them. `load_run`, `restore` and `restore_agent` read a finished or running
run back from its workdir (for recording, probes and tests).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from dreamerjax.agents.agent import Agent
from dreamerjax.data import envs, replay, vector_env
from dreamerjax.data.envgroup import EnvGroup
from dreamerjax.models import openloop
from dreamerjax.run import configs, errors, lock, parallel, validation
from dreamerjax.run.checkpoint import Checkpointer
from dreamerjax.run.logger import METRICS_FILE, Logger

# Keys that may change when a run is resumed: they extend or re-time the run, not change it.
RESUMABLE_CHANGES = ('run.steps', 'run.compile_cache', 'run.log_every', 'run.eval_every',
                     'run.eval_episodes', 'run.save_every_minutes', 'run.keep_checkpoints',
                     'run.force', 'run.transfer_guard')
CONFIG_FILE = 'config.json'
# Where a run runs (platform, devices, mesh, processes, seeds), written at its start.
PLACEMENT_FILE = 'run.json'
# Observed steps before the open-loop prediction written at each evaluation (as in Dreamer's
# open-loop videos: the rest of the replayed sequence is predicted from the actions alone).
OPENLOOP_CONTEXT = 5


def setup(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Mesh]:
  """The resolved config and the device mesh, checked against each other; turns on the
  compilation cache that `run.compile_cache` names (unless one is already set)."""
  config = configs.resolve(config)
  if config.run.compile_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.run.compile_cache))
  mesh = parallel.make_mesh(config.parallel.devices)
  validation.validate(config, mesh.size)
  return config, mesh


def placement(layout: parallel.Layout) -> dict:
  """Where a run runs: the platform, the devices, the mesh shape (`data=8`), this process and the
  process count, and the number of seeds trained side by side."""
  return {'platform': jax.default_backend(), 'device_count': jax.device_count(),
          'mesh': ','.join(f'{name}={size}' for name, size in layout.mesh.shape.items()),
          'process_index': jax.process_index(), 'process_count': jax.process_count(),
          'num_seeds': layout.num_seeds}


def write_placement(workdir: str, layout: parallel.Layout) -> dict:
  """Logs `placement(layout)` and writes it to `<workdir>/run.json` (process 0)."""
  info = placement(layout)
  logging.info('Running on %s: %d device(s), mesh %s, process %d of %d, %d seed(s).',
               info['platform'], info['device_count'], info['mesh'], info['process_index'],
               info['process_count'], info['num_seeds'])
  if parallel.is_main_process():
    with open(os.path.join(workdir, PLACEMENT_FILE), 'w') as f:
      json.dump(info, f, indent=2, sort_keys=True)
  return info


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def _lock_workdir(workdir: str) -> None:
  """Process 0 takes the workdir's lock (`lock`); every process fails if it could not."""
  busy = None
  if parallel.is_main_process():
    try:
      lock.acquire(workdir)
    except errors.WorkdirBusy as error:
      busy = error
  if not parallel.main_process_says(busy is None):
    raise busy or errors.WorkdirBusy(f'{workdir} is in use by another run (see process 0)')


def _config_differences(config: ml_collections.ConfigDict, path: str) -> list[str]:
  """`key: saved x, now y` for the options that differ from the run saved in `path`."""
  with open(path) as f:
    raw = json.load(f)
  saved = _flatten(raw)
  new = _flatten(json.loads(json.dumps(config.to_dict())))
  # A run saved before a key existed ran with the value that key now resolves to for it (its
  # default, or what its size and variant fill in), or with the value `configs.BEFORE_KEY` names.
  defaults = configs.base()
  configs.update(defaults, raw)
  try:
    defaults = configs.resolve(defaults)
  except Exception:  # noqa: BLE001 - a saved config this code cannot resolve: plain defaults
    defaults = configs.base()
  defaults = _flatten(json.loads(json.dumps(defaults.to_dict())))
  defaults.update(configs.BEFORE_KEY)
  saved = {**{k: v for k, v in defaults.items() if k in new}, **saved}
  differ = sorted(k for k in set(saved) | set(new) if k not in RESUMABLE_CHANGES
                  and saved.get(k, '<unset>') != new.get(k, '<unset>'))
  return [f'{k}: saved {saved.get(k, "<unset>")!r}, now {new.get(k, "<unset>")!r}' for k in differ]


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Takes the workdir's lock (released by `train.run`), checks that `workdir` holds no run with
  an incompatible config, and writes config.json."""
  os.makedirs(workdir, exist_ok=True)
  _lock_workdir(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path) and not config.run.force:
    differ = _config_differences(config, path)
    if differ:
      raise errors.ConfigError(
          f'{workdir} holds a run with a different config ({"; ".join(differ)}); use another '
          '--workdir, or pass --config.run.force=True to delete that run and start over')
  # Every process has read config.json before process 0 replaces it (or deletes the old run).
  parallel.barrier('dreamerjax: workdir checked')
  if parallel.is_main_process():
    if config.run.force:
      cut = [name for name in os.listdir(workdir) if name.startswith(f'{METRICS_FILE}.cut-')]
      for name in ('checkpoints', METRICS_FILE, 'tensorboard', 'plots', 'videos', *cut):
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
    with open(path, 'w') as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  parallel.barrier('dreamerjax: workdir ready')


class StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop polls, so it can checkpoint before exiting. Held
  until the last checkpoint is written: a second signal meanwhile is logged, not obeyed, so it
  cannot cut that checkpoint short (kill -9 still can; the step being written is then lost and
  the older ones stay whole)."""

  def __init__(self):
    self.signal = None
    self.count = 0
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.count += 1
    if self.signal is None:
      self.signal = signal.Signals(signum).name
      logging.warning('Got %s: stopping after the next step and saving a checkpoint.',
                      self.signal)
    else:
      logging.warning('Got %s again: already stopping, the checkpoint is being written '
                      '(kill -9 would lose it; the older ones stay whole).',
                      signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def open_checkpointer(workdir: str, keep: int | None = None, writer: bool = True
                      ) -> Checkpointer:
  """The checkpointer of the run in `workdir` (`<workdir>/checkpoints`). The agent's arrays
  (parameters, optimizer state) must be finite; the replay holds data, checked by checksum only.
  `writer=False` for reading another process's run."""
  directory = os.path.join(workdir, 'checkpoints')
  finite = lambda path: not path.startswith("['replay']")  # noqa: E731
  return Checkpointer(directory, keep=keep or 3, finite=finite, writer=writer)


def restore_checkpoint(workdir: str, abstract: Any) -> tuple[int, Any, dict]:
  """`(step, tree, meta)` of the newest checkpoint in `workdir` that restores into `abstract`."""
  checkpointer = open_checkpointer(workdir, writer=False)
  try:
    restored = checkpointer.restore_latest(abstract)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
  return restored


def open_logger(workdir: str, total_steps: int, resume_step: int | None = None,
                **kwargs) -> Logger:
  """The run's logger; only process 0 writes (metrics.jsonl, TensorBoard, the console).
  `resume_step`: the step the run goes on from (see `Logger`)."""
  return Logger(workdir, total_steps, enabled=parallel.is_main_process(),
                resume_step=resume_step, **kwargs)


def warn_interrupted(signal_name: str, unit: str, step: int) -> None:
  logging.warning('Stopped by %s at %s %d; checkpoint saved. Run the same command to resume.',
                  signal_name, unit, step)


def replay_spec(env: vector_env.VectorEnv | EnvGroup, agent: Agent | None = None) -> dict:
  """The fields of a replayed step; with `agent` and its `model.replay_context`, also the latent
  state stored next to each step (`WorldModel.context_spec`)."""
  context = agent.world_model.context_spec() if agent is not None else {}
  return {**env.obs_space, 'action': ((env.act_space.num_actions,), np.float32),
          'reward': ((), np.float32), 'is_first': ((), np.bool_), 'is_last': ((), np.bool_),
          'is_terminal': ((), np.bool_), **context}


def make_env(config, num_envs: int, seed: int) -> vector_env.VectorEnv:
  """The envs of `config.task`; a task or env option they refuse raises `errors.ConfigError`."""
  size = (config.env.image_size, config.env.image_size)
  try:
    return envs.make_env(config.task, num_envs, seed, size=size,
                         from_pixels=config.env.from_pixels, sticky=config.env.sticky,
                         noop_max=config.env.noop_max,
                         max_episode_steps=config.env.max_episode_steps)
  except ValueError as error:
    raise errors.ConfigError(f'--config.task={config.task!r} and the env options: {error}') \
        from error


def make_env_group(config, num_envs: int, seed: int, layout: parallel.Layout,
                   shared: bool = True) -> EnvGroup:
  """The envs of seeds `seed .. seed + K - 1`; split over processes if `shared`, else every
  process steps all of them (evaluation, whose arrays are replicated)."""
  index, count = (jax.process_index(), jax.process_count()) if shared else (0, 1)
  return EnvGroup(functools.partial(make_env, config), num_envs,
                  [seed + k for k in range(layout.num_seeds)], layout.stacked, index, count)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of the loop, with explicit shardings. Shapes per seed, behind a `[K]`
  axis with several seeds (see `parallel.Layout`); `N` envs per seed, `A` action size.

  train(state, replay) -> (state, metrics): samples `[B, T]` from every replay shard, one
    `agent.train_step`; the state is donated, metrics are replicated scalars.
  policy(state, carry, obs, key, step) -> (carry, action `[N, A]`): acting with envs split over
    `data`; the carry is donated; the key is folded with the env step inside.
  eval_policy: the same with the policy mode, on replicated eval envs.
  add(replay, step) -> replay: writes one step `[N, ...]` of every env; the replay is donated.
  predict(state, replay) -> open-loop prediction (`openloop.open_loop`) of a replayed batch
    `[B, T]` from its first `OPENLOOP_CONTEXT` steps, replicated (one seed only).
  train_fn: `train` of one seed before jit, for programs that call it inside their own loop
    (`device_loop`).
  """

  train: Callable
  policy: Callable
  eval_policy: Callable
  add: Callable
  predict: Callable
  state_sharding: Any
  replay_sharding: Any
  train_fn: Callable


def build(agent: Agent, layout: parallel.Layout, config: ml_collections.ConfigDict,
          spec: dict) -> tuple[Programs, Callable, Callable]:
  """Jitted programs, and functions that create the state and the replay with their shardings."""
  run_config, mesh = config.run, layout.mesh
  keys = lambda: layout.seed_keys(config.seed)  # noqa: E731
  init = layout.over_seeds(agent.init)
  state_sharding = parallel.state_shardings(layout, jax.eval_shape(lambda: init(keys())),
                                            config.parallel.param_rules)
  make_replay = lambda: layout.broadcast(replay.init(  # noqa: E731
      spec, run_config.envs, run_config.replay_capacity, num_shards=mesh.size))
  replay_sharding = layout.with_seed_axis(replay.shardings(mesh, jax.eval_shape(
      lambda: replay.init(spec, run_config.envs, run_config.replay_capacity,
                          num_shards=mesh.size))))
  batch_size, length = run_config.batch_size, run_config.batch_length
  batch_sharding = parallel.data_sharded(mesh)

  def train(state, replay_state):
    rng, sample_key = jax.random.split(state.rng)
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return agent.train_step(state.replace(rng=rng), batch)

  def predict(state, replay_state):
    sample_key, key = jax.random.split(jax.random.fold_in(state.rng, 1))
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    result = openloop.open_loop(agent.world_model, state.params['world_model'], batch,
                                min(OPENLOOP_CONTEXT, length - 1), key)
    # The errors cover the whole batch; only the video's sequences need to reach the host.
    shown = lambda tree: jax.tree.map(lambda x: x[:openloop.VIDEO_SEQUENCES], tree)  # noqa: E731
    return {**result, 'truth': shown(result['truth']), 'prediction': shown(result['prediction'])}

  def acting(mode):
    def policy(state, carry, obs, key, step):
      return agent.policy_step(state, carry, obs, jax.random.fold_in(key, step), mode=mode)
    return layout.over_seeds(policy, in_axes=(0, 0, 0, 0, None))

  scalar, per_env, whole = parallel.replicated(mesh), layout.per_env, layout.replicated
  programs = Programs(
      train=jax.jit(layout.over_seeds(train), in_shardings=(state_sharding, replay_sharding),
                    out_shardings=(state_sharding, whole), donate_argnums=0),
      policy=jax.jit(acting('train'),
                     in_shardings=(state_sharding, per_env, per_env, whole, scalar),
                     out_shardings=(per_env, per_env), donate_argnums=1),
      eval_policy=jax.jit(acting('eval'),
                          in_shardings=(state_sharding, whole, whole, whole, scalar),
                          out_shardings=(whole, whole), donate_argnums=1),
      add=jax.jit(layout.over_seeds(replay.add), in_shardings=(replay_sharding, per_env),
                  out_shardings=replay_sharding, donate_argnums=0),
      predict=jax.jit(predict, in_shardings=(state_sharding, replay_sharding),
                      out_shardings=whole),
      state_sharding=state_sharding, replay_sharding=replay_sharding, train_fn=train)
  make_state = jax.jit(lambda: init(keys()), out_shardings=state_sharding)
  return programs, make_state, jax.jit(make_replay, out_shardings=replay_sharding)


def initial_carry(agent: Agent, layout: parallel.Layout, num_envs: int, sharding) -> dict:
  return jax.jit(lambda: layout.broadcast(agent.initial_policy_carry(num_envs)),
                 out_shardings=sharding)()


def policy_keys(layout: parallel.Layout, seed: int, env_step: int) -> jax.Array:
  """Acting keys `[K?]` of a run (re)started at `env_step`, made on the devices."""
  fold = layout.over_seeds(jax.random.fold_in, in_axes=(0, None))
  return jax.jit(lambda: fold(layout.seed_keys(seed), env_step + 1),
                 out_shardings=layout.replicated)()


def evaluate(agent: Agent, programs: Programs, state, config, layout: parallel.Layout,
             episodes: int, seed: int, max_steps: int = 100_000) -> np.ndarray:
  """Returns `[K?, episodes]` of the first episode of each of `episodes` eval envs per seed
  (NaN where none ended within `max_steps`), acting with the policy mode. Every process steps all
  eval envs (replicated arrays)."""
  env = make_env_group(config, episodes, seed, layout, shared=False)
  try:
    obs = env.reset()
    whole, scalar = layout.replicated, parallel.replicated(layout.mesh)
    carry = initial_carry(agent, layout, episodes, whole)
    keys = jax.jit(lambda: layout.seed_keys(seed), out_shardings=whole)()
    returns: dict[tuple[int, int], float] = {}
    for step in range(max_steps):
      carry, action = programs.eval_policy(state, carry, layout.put(model_obs(obs, env), whole),
                                           keys, layout.put(np.int32(step), scalar))
      obs = env.step(agent.env_action(parallel.to_host(action)))
      for seed_index, index, episode_return, _ in env.pop_finished_episodes():
        returns.setdefault((seed_index, index), episode_return)
      if len(returns) == layout.num_seeds * episodes:
        break
    table = np.array([[returns.get((k, i), np.nan) for i in range(episodes)]
                      for k in range(layout.num_seeds)])
    return table if layout.stacked else table[0]
  finally:
    env.close()


def model_obs(obs: dict, env: vector_env.VectorEnv | EnvGroup) -> dict:
  """The fields of an env step the policy reads: the observation and `is_first`."""
  return {key: obs[key] for key in (*env.obs_space, 'is_first')}


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, Agent, replay.Spec]:
  """The config, agent and replay spec of the run in `workdir` (no arrays)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.RunNotFound(f'{workdir} holds no run ({CONFIG_FILE} missing): pass the run '
                             f'directory that scripts/train.py was given as --workdir')
  with open(path) as f:
    config = configs.base()  # keys added since the run was saved keep their defaults
    configs.update(config, json.load(f))
  env = make_env(config, 1, config.seed)
  env.close()
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  return config, agent, replay_spec(env, agent)


def run_layout(config: ml_collections.ConfigDict) -> parallel.Layout:
  """The device layout `config` asks for (a new run's or a saved one's): its mesh over
  `parallel.devices`, its number of seeds."""
  return parallel.Layout(parallel.make_mesh(config.parallel.devices), config.num_seeds)


def restore(workdir: str, loaded: tuple | None = None, built: tuple | None = None
            ) -> tuple[int, Any, replay.ReplayState, dict]:
  """The newest checkpoint of the run in `workdir`: `(step, TrainState, ReplayState, meta)`,
  sharded as the run had them (every process calls it with several processes). The step counts
  env steps; for offline runs it counts updates and the replay is None (they do not save it:
  it is the dataset). `loaded`: what `load_run(workdir)` returned, and `built`: what `build`
  returned for it, if the caller has them already (a caller that runs the programs builds them
  once)."""
  config, agent, spec = loaded or load_run(workdir)
  if built is None:
    built = build(agent, run_layout(config), config, spec)
  programs, make_state, make_replay = built
  with_sharding = lambda tree, shardings: jax.tree.map(  # noqa: E731
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  abstract = {'agent': with_sharding(jax.eval_shape(make_state), programs.state_sharding)}
  if config.run.mode != 'offline':
    abstract['replay'] = with_sharding(jax.eval_shape(make_replay), programs.replay_sharding)
  step, tree, meta = restore_checkpoint(workdir, abstract)
  return step, tree['agent'], tree.get('replay'), meta


def restore_agent(workdir: str, loaded: tuple | None = None
                  ) -> tuple[ml_collections.ConfigDict, Agent, int, Any]:
  """`(config, agent, step, TrainState)` of the newest checkpoint of the run in `workdir` (online
  or offline), for acting with it: the state of seed 0 where the run trained several. `loaded`:
  what `load_run(workdir)` returned, if the caller has it already."""
  loaded = loaded or load_run(workdir)
  config, agent, _ = loaded
  step, state, _, _ = restore(workdir, loaded)
  if config.num_seeds > 1:
    state = jax.tree.map(lambda x: x[0], state)
  return config, agent, step, state
