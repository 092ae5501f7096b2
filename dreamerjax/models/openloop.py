"""Open-loop prediction: observe a context of k steps, then roll the prior forward on recorded
actions.

`rollout_actions` is the action-sequence form of `dynamics.imagine` (the planner evaluates its
candidates with it). `open_loop` compares predicted observations, rewards and continues with the
truth for horizons 1..H; `write_video` renders truth | prediction | error to the workdir (GIF)
and to TensorBoard (a frame strip per horizon).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.types import Batch

# Sequences shown side by side in an open-loop video.
VIDEO_SEQUENCES = 4


def rollout_actions(dynamics, params, carry: dict, actions: jax.Array, key: jax.Array):
  """Rolls the prior on a given action sequence `[B, H, A]` from `carry`.

  Returns `(carry, features [B, H+1, F])`; `features[:, 0]` is the start, `features[:, h]` the
  prediction h steps ahead.
  """

  def step(carry, inputs):
    action, step_key = inputs
    carry, _ = dynamics.img_step(params, carry, action, step_key)
    return carry, dynamics.features(carry)

  horizon = actions.shape[1]
  start = dynamics.features(carry)
  carry, feats = jax.lax.scan(step, carry, (jnp.swapaxes(actions, 0, 1),
                                            jax.random.split(key, horizon)))
  return carry, jnp.concatenate([start[:, None], jnp.swapaxes(feats, 0, 1)], 1)


def open_loop(world_model, params, batch: Batch, context: int, key: jax.Array) -> dict:
  """Predicts steps `context .. T-1` of `batch` `[B, T, ...]` from its first `context` steps.

  The posterior is built from the observations of steps `0 .. context-1`; from there on the model
  only sees the recorded actions. Returns `{'truth': {...}, 'prediction': {...}, 'error': {...}}`
  with `[B, H, ...]` observations, `reward` and `cont` (H = T - context), and per-horizon mean
  squared errors `[H]` under `error`.
  """
  observe_key, rollout_key = jax.random.split(key)
  dynamics = world_model.dynamics
  batch_size = batch['action'].shape[0]
  head = jax.tree.map(lambda x: x[:, :context], batch)
  is_first = head['is_first'].at[:, 0].set(True)
  carry, _, _, _ = dynamics.observe(
      params['dynamics'], dynamics.initial(batch_size), world_model.encode(params, head),
      head['action'], is_first, observe_key)
  _, feats = rollout_actions(dynamics, params['dynamics'], carry, batch['action'][:, context:],
                             rollout_key)
  feats = feats[:, 1:]
  prediction = world_model.decode(params, feats)
  prediction['reward'] = world_model.reward(params, feats)
  prediction['cont'] = jax.nn.sigmoid(world_model.cont_logits(params, feats))
  truth = {key: batch[key][:, context:].astype(jnp.float32) for key in prediction
           if key != 'cont'}
  truth['cont'] = 1.0 - batch['is_terminal'][:, context:].astype(jnp.float32)
  if 'image' in truth:
    truth['image'] = truth['image'] / 255.0
  error = {key: jnp.mean(jnp.square(prediction[key] - truth[key]).reshape(
      *truth[key].shape[:2], -1), (0, 2)) for key in prediction}
  return {'truth': truth, 'prediction': prediction, 'error': error}


def video_frames(result: dict, max_sequences: int = VIDEO_SEQUENCES) -> np.ndarray:
  """uint8 frames `[H, rows*h, 3*w, 3]`: truth | prediction | error per sequence (image obs), or
  a line-plot panel per step for vector obs."""
  if 'image' in result['truth']:
    truth = np.asarray(result['truth']['image'][:max_sequences])
    pred = np.clip(np.asarray(result['prediction']['image'][:max_sequences]), 0, 1)
    error = np.abs(truth - pred)
    panels = np.concatenate([truth, pred, error], -2)        # [B, H, h, 3w, C]
    frames = np.concatenate(list(panels), -3)                 # [H, B*h, 3w, C]
    return (255 * frames).astype(np.uint8)
  return _vector_frames(np.asarray(result['truth']['vector'][0]),
                        np.asarray(result['prediction']['vector'][0]))


def _vector_frames(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """Bars of the true and predicted vector (and their difference) per step: `[H, 96, 3*96, 3]`."""
  horizon, dims = truth.shape
  scale = max(float(np.max(np.abs(truth))), 1e-6)
  size = 96
  frames = np.full((horizon, size, 3 * size, 3), 255, np.uint8)
  width = max(1, size // max(dims, 1))
  for panel, values, color in ((0, truth, (40, 90, 200)), (1, prediction, (200, 90, 40)),
                               (2, truth - prediction, (120, 120, 120))):
    heights = np.clip(values / scale, -1, 1) * (size // 2 - 2)
    for step in range(horizon):
      for dim in range(dims):
        top, bottom = sorted((size // 2, size // 2 - int(round(heights[step, dim]))))
        left = panel * size + dim * width
        frames[step, top:bottom + 1, left:left + max(1, width - 2)] = color
  frames[:, size // 2, :] = 0
  return frames


def write_video(logger, step: int, result: dict, name: str = 'openloop') -> str | None:
  """Writes the truth | prediction | error video (GIF in `videos/`) and a TensorBoard strip."""
  frames = video_frames(result)
  path = logger.video(step, name, frames, fps=5)
  logger.image(step, name, np.concatenate(list(frames[:: max(1, len(frames) // 8)]), 0))
  return path


def error_metrics(result: dict) -> dict[str, float]:
  """`openloop/<key>_mse_h<h>` for h in 1, 5, 15 (those within the horizon) and the mean."""
  metrics = {}
  for key, error in result['error'].items():
    error = np.asarray(error)
    metrics[f'openloop/{key}_mse'] = float(np.mean(error))
    for horizon in (1, 5, 15):
      if horizon <= len(error):
        metrics[f'openloop/{key}_mse_h{horizon}'] = float(error[horizon - 1])
  return metrics
