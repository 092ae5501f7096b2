"""The online Dreamer loop: envpool envs -> replay -> jitted train_step, with logging, evaluation
and checkpoints.

Durations are all in env steps (summed over envs). A run started again on the same workdir resumes
from its newest checkpoint that restores. Every process of a multi-process job runs the loop: each
steps its share of the envs, all save and restore checkpoints together, and only process 0 writes
logs, metrics, config.json, run.json and plots. With several seeds, per-seed rows of metrics.jsonl
(episodes, train metrics, evaluations) carry a `seed` field (0 .. K-1, the agent trained with
`config.seed + seed`); `run/` rows have none.
"""

from __future__ import annotations

import contextlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamerjax.agents.agent import Agent, check_finite
from dreamerjax.data import replay
from dreamerjax.models import openloop
from dreamerjax.run import common, parallel
from dreamerjax.run.logger import eval_metrics, plot_curve


class OnlineLoop:
  """One online run in `workdir`: `__init__` builds it (envs, agent, programs, the state and
  replay of the newest checkpoint), `run` steps it until `run.steps` or a signal, `finish` saves
  it and returns the summary."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, layout: parallel.Layout):
    self.config, self.workdir, self.layout = config, workdir, layout
    run_config = config.run
    self.env = env = common.make_env_group(config, run_config.envs, config.seed, layout)
    self.agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
    spec = common.replay_spec(env, self.agent)
    try:
      # build checks the parameter rules before anything is written to the workdir.
      self.programs, make_state, make_replay = common.build(self.agent, layout, config, spec)
      common.prepare_workdir(config, workdir)
    except Exception:
      env.close()
      raise
    common.write_placement(workdir, layout)
    logging.info('Replay: %d env steps per seed, about %.1f MiB for %d seed(s).',
                 run_config.replay_capacity, layout.num_seeds * replay.memory_bytes(
                     spec, run_config.envs, run_config.replay_capacity) / 2**20, layout.num_seeds)
    self.state, self.replay_state = make_state(), make_replay()
    counts = self.agent.param_counts(jax.eval_shape(self.agent.init, jax.random.key(0)))
    self.params = counts['total']
    logging.info('Parameters per seed: %s', {k: f'{v:,}' for k, v in counts.items()})
    self.counters = {'env_step': 0, 'updates': 0, 'train_credit': 0.0, 'episodes': 0}
    self.checkpointer = common.open_checkpointer(workdir, keep=run_config.keep_checkpoints)
    self.logger = None
    try:
      self._restore()
      # The history after the restored step is cut before anything new is written.
      self.logger = common.open_logger(workdir, run_config.steps,
                                       resume_step=self.counters['env_step'])
    except BaseException:
      self.abandon()
      raise
    self.seed_field = (lambda k: k) if layout.stacked else (lambda k: None)
    self.multi_process = jax.process_count() > 1
    self.guard = ((lambda: jax.transfer_guard('disallow')) if run_config.transfer_guard
                  else contextlib.nullcontext)
    self.num_envs = run_config.envs  # per seed, over all processes
    self.updates_per_step = run_config.train_ratio / (run_config.batch_size
                                                      * run_config.batch_length)
    self.scalar = parallel.replicated(layout.mesh)
    try:
      self._start()
    except BaseException:
      self.abandon()
      raise

  def _restore(self) -> None:
    """The state, replay and counters of the newest checkpoint, if there is one."""
    restored = self.checkpointer.restore_latest({'agent': self.state,
                                                 'replay': self.replay_state})
    if restored is not None:
      _, tree, meta = restored
      self.state, self.replay_state = tree['agent'], tree['replay']
      self.counters.update(meta['counters'])
    # Steps written per env, tracked on the host so the loop never waits on the device for it.
    self.position = int(parallel.to_host(self.replay_state.position).reshape(-1)[0])
    self.capacity_per_env = self.config.run.replay_capacity // self.config.run.envs
    if restored is not None:
      logging.info('Resumed from checkpoint at env step %d (%d updates, replay holds %d steps).',
                   self.counters['env_step'], self.counters['updates'],
                   min(self.position, self.capacity_per_env) * self.config.run.envs)

  def _start(self) -> None:
    """Resets the envs and writes their first step; the acting keys and carry of the env step
    the run (re)starts at."""
    config, layout, env, env_step = self.config, self.layout, self.env, self.counters['env_step']
    self.rngs = [np.random.default_rng([seed, env_step]) for seed in env.seeds]
    self.policy_key = common.policy_keys(layout, config.seed, env_step)
    obs = env.reset()
    action_zeros = np.zeros((*obs['is_first'].shape, env.act_space.num_actions), np.float32)
    self.step_data = layout.put({**obs, 'action': action_zeros})
    self.carry = common.initial_carry(self.agent, layout, self.num_envs, layout.per_env)
    self._add()
    self.finished: list[tuple[int, int, float, int]] = []  # (env step, seed, return, length)
    self.metrics, self.last_log, self.last_eval = None, env_step, env_step
    self.last_save, self.start_time, self.start_step = time.monotonic(), time.monotonic(), env_step

  def _add(self) -> None:
    """Writes `step_data` into the replay, with `model.replay_context` next to the latent state
    the policy enters that step with (zeros during prefill, when the policy does not run)."""
    context = self.agent.world_model.context_fields(self.carry['latent'])
    self.replay_state = self.programs.add(self.replay_state, {**self.step_data, **context})
    self.position += 1

  def _act(self) -> None:
    """One step of every env (random actions during prefill, then the policy's) into the replay,
    then the updates that the train ratio has earned so far."""
    counters, run_config, env = self.counters, self.config.run, self.env
    if counters['env_step'] < run_config.prefill:
      env_action = env.random_actions(self.rngs)
      model_action = self.agent.model_action(env_action)
    else:
      self.carry, action = self.programs.policy(
          self.state, self.carry, common.model_obs(self.step_data, env), self.policy_key,
          self.layout.put(np.int32(counters['env_step']), self.scalar))
      model_action = parallel.to_host(action)
      env_action = self.agent.env_action(model_action)
    obs = env.step(env_action)
    stored_action = model_action * ~obs['is_first'][..., None]
    self.step_data = self.layout.put({**obs, 'action': stored_action})
    self._add()
    counters['env_step'] += self.num_envs
    self.finished.extend((counters['env_step'], seed, episode_return, episode_length)
                         for seed, _, episode_return, episode_length
                         in env.pop_finished_episodes())

    if counters['env_step'] >= run_config.prefill and self.position >= run_config.batch_length:
      counters['train_credit'] += self.num_envs * self.updates_per_step
      while counters['train_credit'] >= 1.0:
        self.state, self.metrics = self.programs.train(self.state, self.replay_state)
        counters['updates'] += 1
        counters['train_credit'] -= 1.0

  def _write_episodes(self) -> None:
    """Logs the finished episodes of every process (gathered: all processes call this)."""
    rows = parallel.gather_rows(np.asarray(self.finished, np.float64).reshape(-1, 4))
    self.finished.clear()
    for step, seed, episode_return, episode_length in sorted(rows.tolist(), key=lambda r: r[0]):
      self.counters['episodes'] += 1
      row = {'episode/return': episode_return, 'episode/length': episode_length}
      if self.env.success is not None:
        row['episode/success'] = self.env.success(episode_return)
      self.logger.write(int(step), row, seed=self.seed_field(int(seed)))

  def _log(self, step: int) -> None:
    """The `run/` row (speed, updates, replay size) and the latest train metrics."""
    elapsed = time.monotonic() - self.start_time
    row = {'run/env_steps_per_s': (step - self.start_step) / max(elapsed, 1e-9),
           'run/seconds': elapsed, 'run/updates': self.counters['updates'],
           'run/replay_size': min(self.position, self.capacity_per_env) * self.num_envs}
    per_seed = []
    if self.metrics is not None:
      fetched = parallel.to_host(self.metrics)
      check_finite(fetched, step)
      if self.layout.stacked:
        per_seed = [{k: v[seed] for k, v in fetched.items()}
                    for seed in range(self.layout.num_seeds)]
      else:
        row.update(fetched)
    self.logger.write(step, row)
    for seed, values in enumerate(per_seed):
      self.logger.write(step, values, seed=seed)

  def _evaluate(self, step: int) -> None:
    """Evaluation episodes of every seed; with one seed also the open-loop prediction."""
    config, layout = self.config, self.layout
    returns = common.evaluate(self.agent, self.programs, self.state, config, layout,
                              config.run.eval_episodes, config.seed + 10_000 + step)
    for seed, seed_returns in enumerate(returns if layout.stacked else [returns]):
      self.logger.write(step, eval_metrics(seed_returns, self.env.success),
                        seed=self.seed_field(seed))
    if not layout.stacked:  # what the model predicts from actions alone: metrics and video
      prediction = parallel.to_host(self.programs.predict(self.state, self.replay_state))
      self.logger.write(step, openloop.error_metrics(prediction))
      if parallel.is_main_process():
        openloop.write_video(self.logger, step, prediction)

  def _save(self) -> None:
    self.checkpointer.save(self.counters['env_step'],
                           {'agent': self.state, 'replay': self.replay_state},
                           {'counters': self.counters, 'config': self.config.to_dict()})

  def run(self, stop: common.StopFlag) -> str | None:
    """Steps the envs until `run.steps`; returns the signal that stopped it early, if one did.
    A full disk, or a fault of a background save, ends it within a second (StorageError)."""
    run_config = self.config.run
    while self.counters['env_step'] < run_config.steps:
      with self.guard():
        self._act()
      step = self.counters['env_step']
      at_log = step - self.last_log >= run_config.log_every or step >= run_config.steps
      if at_log or not self.multi_process:
        self._write_episodes()
      if at_log:
        self.last_log = step
        self._log(step)
      if run_config.eval_every and step - self.last_eval >= run_config.eval_every:
        self.last_eval = step
        self._evaluate(step)
      self.logger.progress(step, self.counters['updates'])
      self.checkpointer.check()
      save_due = time.monotonic() - self.last_save >= 60 * run_config.save_every_minutes
      stopping = stop.signal is not None
      if self.multi_process:  # decided together, at log steps (the same on every process)
        stopping, save_due = parallel.agree(stopping, save_due) if at_log else (False, False)
      if save_due:
        self._save()
        self.last_save = time.monotonic()
      if stopping:
        return stop.signal or 'a signal to another process'
    return None

  def abandon(self) -> None:
    """Closes the envs, the checkpointer and the logger after an error, without saving (the
    newest complete checkpoint stays the one to resume from) and without raising."""
    for close in (self.env.close, self.checkpointer.abandon,
                  self.logger.abandon if self.logger else None):
      try:
        if close is not None:
          close()
      except Exception as error:  # noqa: BLE001 - the error that ended the run is reported
        logging.debug('While closing after an error: %s', error)

  def finish(self, interrupted: str | None) -> dict:
    """Saves the last checkpoint, closes the envs and logs; returns the run's summary."""
    try:
      self._save()
      self.checkpointer.close()
    except BaseException:
      self.abandon()
      raise
    self.env.close()
    self.logger.progress(self.counters['env_step'], self.counters['updates'], force=True)
    self.logger.close()
    summary = dict(self.counters, interrupted=interrupted, params=self.params,
                   seconds=time.monotonic() - self.start_time,
                   param_checksum=parallel.checksum(self.state.params))
    if parallel.is_main_process():
      summary['plot'] = plot_curve(self.workdir)
    if interrupted:
      common.warn_interrupted(interrupted, 'env step', self.counters['env_step'])
    return summary


def run(config: ml_collections.ConfigDict, workdir: str,
        loop_type: type[OnlineLoop] = OnlineLoop) -> dict:
  """Trains `config.num_seeds` agents online as `config` (from `common.setup`) says, in
  `workdir`, with a loop of `loop_type` (`device_loop.run` passes its own); returns a summary."""
  loop = loop_type(config, workdir, common.run_layout(config))
  # SIGTERM/SIGINT: stop at the next step and checkpoint; held until that checkpoint is written.
  with common.StopFlag() as stop:
    try:
      interrupted = loop.run(stop)
    except BaseException:
      loop.abandon()
      raise
    return loop.finish(interrupted)
