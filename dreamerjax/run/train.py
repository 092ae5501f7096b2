"""The library entry point behind `scripts/train.py`: `run(config, workdir)` checks the config
against the devices and runs the training mode it names.

The modes, one module each, all built on `common`:

| mode | module | when |
| --- | --- | --- |
| online Dreamer loop (envs -> replay -> train step) | `online` | the default |
| the same, acting and env steps in one jitted scan | `device_loop` | `run.loop=device` |
| from a recorded dataset | `offline` | `run.mode=offline` |
| World Models stages (VAE, MDN-RNN, controller) | `worldmodels` | `variant=worldmodels` |

A run started again on the same workdir resumes from its newest checkpoint that restores and
verifies (the World Models stages start over), and cuts its metrics history back to that step. A
workdir holds one live run at a time (`lock`).
"""

from __future__ import annotations

import ml_collections

from dreamerjax.run import common, device_loop, errors, lock, offline, online, worldmodels


def mode(config: ml_collections.ConfigDict):
  """The module whose `run(config, workdir)` trains `config`."""
  if config.run.mode == 'offline':  # from a recorded dataset; the env only for evaluation
    return offline
  if config.variant == 'worldmodels':  # trained in stages, not by the online loop
    return worldmodels
  return device_loop if config.run.loop == 'device' else online


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains as `config` says, in `workdir`; returns the mode's summary.

  Every process of a multi-process job calls it (see `online`): each steps its share of the envs,
  all save and restore checkpoints together, and only process 0 writes logs, metrics and plots.
  """
  config, _ = common.setup(config)
  errors.clear_pending()  # faults of an earlier run in this process are not this run's
  try:
    return mode(config).run(config, workdir)
  finally:
    lock.release(workdir)  # taken by common.prepare_workdir
