"""Offline training (`--config.run.mode=offline`): world model and policy from a recorded dataset.

The dataset (`--config.run.dataset`, see `dataset`) is streamed once into the same replay buffer
and the same jitted `train_step` the online loop uses; the policy learns in imagination only (with
the `agent.bc_weight` behaviour-cloning term toward the dataset's actions). The env is created only
to check the dataset's spaces and for evaluation episodes. `run.steps`, `run.log_every` and
`run.eval_every` count train updates here (there are no env steps).
"""

from __future__ import annotations

import time

import jax
import ml_collections
from absl import logging

from dreamerjax.agents.agent import Agent, check_finite
from dreamerjax.data import dataset, replay
from dreamerjax.run import common, parallel, validation
from dreamerjax.run.logger import EVAL_RETURN_KEY, eval_metrics, plot_curve


def add_many(replay_state: replay.ReplayState, steps: dict) -> replay.ReplayState:
  """`replay.add` of every step of `steps` (`{field: [t, N, ...]}`), in order."""
  return jax.lax.scan(lambda r, step: (replay.add(r, step), None), replay_state, steps)[0]


def prepare_config(config: ml_collections.ConfigDict, manifest: dict) -> ml_collections.ConfigDict:
  """The config with the replay sized to the dataset: one replay row per recorded env."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.run.envs = manifest['envs']
  config.run.replay_capacity = max(config.run.replay_capacity,
                                   manifest['envs'] * (manifest['steps'] + 1))
  return config


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains offline as `config` (resolved) says, in `workdir`; returns a summary."""
  manifest = dataset.read_manifest(config.run.dataset)
  env = common.make_env(config, 1, config.seed)  # only to read the spaces
  env.close()
  dataset.check_spaces(manifest, config.task, env.obs_space, env.act_space.discrete,
                       env.act_space.num_actions)
  config = prepare_config(config, manifest)
  mesh = parallel.make_mesh(config.parallel.devices)
  validation.validate(config, mesh.size)
  layout = parallel.Layout(mesh, 1)
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  programs, make_state, make_replay = common.build(agent, layout, config, dataset.spec(manifest))
  common.prepare_workdir(config, workdir)
  common.write_placement(workdir, layout)
  run_config = config.run

  add_steps = jax.jit(add_many, in_shardings=(programs.replay_sharding, layout.replicated),
                      out_shardings=programs.replay_sharding, donate_argnums=0)
  replay_state, loaded = dataset.load(run_config.dataset, manifest, make_replay(), add_steps)
  logging.info('Loaded %d steps x %d envs from %s.', loaded, manifest['envs'],
               run_config.dataset)
  if loaded < run_config.batch_length:
    raise ValueError(f'the dataset holds {loaded} steps per env, fewer than '
                     f'--config.run.batch_length={run_config.batch_length}')

  state, counters = make_state(), {'updates': 0}
  checkpointer = common.open_checkpointer(workdir, keep=run_config.keep_checkpoints)
  logger, start, interrupted = None, time.monotonic(), None
  # SIGTERM/SIGINT: stop at the next update and checkpoint; held until that checkpoint is written.
  with common.StopFlag() as stop:
    try:
      restored = checkpointer.restore_latest({'agent': state})
      if restored is not None:
        state, counters = restored[1]['agent'], restored[2]['counters']
      logger = common.open_logger(workdir, run_config.steps, unit='updates',
                                  return_key=EVAL_RETURN_KEY, resume_step=counters['updates'])
      state, interrupted = _train(config, agent, programs, layout, state, replay_state, counters,
                                  checkpointer, logger, stop)
      _save(checkpointer, config, state, counters)
      checkpointer.close()
    except BaseException:
      checkpointer.abandon()
      if logger is not None:
        logger.abandon()
      raise
  logger.close()
  summary = dict(counters, dataset_steps=loaded * manifest['envs'], interrupted=interrupted,
                 seconds=time.monotonic() - start)
  if parallel.is_main_process():
    summary['plot'] = plot_curve(workdir, key=EVAL_RETURN_KEY)
  if interrupted:
    common.warn_interrupted(interrupted, 'update', counters['updates'])
  return summary


def _save(checkpointer, config: ml_collections.ConfigDict, state, counters: dict) -> None:
  checkpointer.save(counters['updates'], {'agent': state},
                    {'counters': counters, 'config': config.to_dict()})


def _train(config: ml_collections.ConfigDict, agent: Agent, programs: common.Programs,
           layout: parallel.Layout, state, replay_state, counters: dict, checkpointer, logger,
           stop: common.StopFlag):
  """Updates until `run.steps` or a signal, logging, evaluating and saving on the way (a full
  disk ends it within a second); returns the state and the signal that stopped it, if one did."""
  run_config, start = config.run, time.monotonic()
  last_save = start
  while counters['updates'] < run_config.steps:
    state, metrics = programs.train(state, replay_state)
    counters['updates'] += 1
    step = counters['updates']
    if step % run_config.log_every == 0 or step == run_config.steps:
      fetched = parallel.to_host(metrics)
      check_finite(fetched, step)
      logger.write(step, {**fetched, 'run/updates': step, 'run/seconds': time.monotonic() - start})
    if run_config.eval_every and (step % run_config.eval_every == 0 or step == run_config.steps):
      returns = common.evaluate(agent, programs, state, config, layout, run_config.eval_episodes,
                                config.seed + 10_000 + step)
      logger.write(step, eval_metrics(returns))
    logger.progress(step, step)
    checkpointer.check()
    if time.monotonic() - last_save >= 60 * run_config.save_every_minutes:
      _save(checkpointer, config, state, counters)
      last_save = time.monotonic()
    if stop.signal is not None:
      return state, stop.signal
  return state, None
