"""Evaluation of a run's newest checkpoint on as many episodes as asked, outside its training
loop: `scripts/evaluate.py`. A run's own evaluations use `run.eval_episodes` (4 on the DMC
sweeps), too few where returns split between success and failure per episode (ReacherEasy's
targets: 0 or about 900 for one policy); this gives the mean over many more."""

from __future__ import annotations

import numpy as np

from dreamerjax.run import common


def checkpoint_returns(workdir: str, episodes: int, seed: int) -> dict:
  """The first episode's return of each of `episodes` eval envs (seeds `seed`, `seed + 1`, ...)
  acting with the policy mode, as the run's own evaluations act, for every seed the run trains:
  `returns` `[K, episodes]` and their mean and standard deviation."""
  if episodes < 1:
    raise ValueError(f'episodes must be at least 1, got {episodes}')
  loaded = common.load_run(workdir)
  config, agent, spec = loaded
  layout = common.run_layout(config)
  built = common.build(agent, layout, config, spec)
  step, state, _, _ = common.restore(workdir, loaded, built)
  programs = built[0]
  returns = np.asarray(common.evaluate(agent, programs, state, config, layout, episodes, seed))
  returns = returns.reshape(config.num_seeds, episodes)
  return {'workdir': workdir, 'task': config.task, 'env_step': int(step), 'seed': seed,
          'episodes': episodes, 'returns': returns.round(3).tolist(),
          'mean': float(np.nanmean(returns)), 'std': float(np.nanstd(returns))}
