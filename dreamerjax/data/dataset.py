"""Offline datasets: recorded env steps on disk, streamed into the replay the online loop uses.

A dataset directory holds `chunk_00000.npz`, ... (`np.savez_compressed`, every field `[t, N, ...]`:
`t` consecutive steps of `N` envs, in the step format the loop adds to replay: the observation
keys, `action` (model action into the step, zero on `is_first`), `reward`, `is_first`, `is_last`,
`is_terminal`) and `manifest.json`:

  {"format": 1, "task": "CartPole-v1", "envs": N, "steps": steps per env,
   "obs_space": {"vector": [[4], "float32"]}, "action": {"discrete": true, "size": 2},
   "episodes": count, "episode_return": {"mean", "min", "max"}, "source": {...},
   "chunks": [{"file": "chunk_00000.npz", "steps": t, "sha256": "..."}, ...]}

A chunk that is missing, truncated or fails its checksum is reported by name and skipped; the
step after a gap is marked `is_first`, so no sequence is stitched across it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterator

import numpy as np
from absl import logging

FORMAT = 1
MANIFEST = 'manifest.json'
STEP_KEYS = ('action', 'reward', 'is_first', 'is_last', 'is_terminal')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class Writer:
  """Writes steps `[N, ...]` of `N` envs into chunks of `chunk_steps` steps, then the manifest."""

  def __init__(self, directory: str, task: str, obs_space: dict, discrete: bool,
               action_size: int, num_envs: int, chunk_steps: int = 1000,
               source: dict | None = None):
    if os.path.exists(os.path.join(directory, MANIFEST)):
      raise FileExistsError(f'{directory} already holds a dataset; choose another directory')
    os.makedirs(directory, exist_ok=True)
    self.directory, self.chunk_steps = directory, chunk_steps
    self.manifest: dict[str, Any] = {
        'format': FORMAT, 'task': task, 'envs': num_envs, 'steps': 0,
        'obs_space': {k: [list(shape), np.dtype(dtype).name]
                      for k, (shape, dtype) in obs_space.items()},
        'action': {'discrete': bool(discrete), 'size': int(action_size)},
        'source': source or {}, 'chunks': []}
    self._pending: list[dict[str, np.ndarray]] = []
    self._returns = np.zeros(num_envs)
    self._finished: list[float] = []

  def add(self, step: dict[str, np.ndarray]) -> None:
    step = {k: np.asarray(v) for k, v in step.items()}
    self._returns = np.where(step['is_first'], 0.0, self._returns + step['reward'])
    self._finished.extend(self._returns[step['is_last']].tolist())
    self._pending.append(step)
    if len(self._pending) >= self.chunk_steps:
      self._flush()

  def _flush(self) -> None:
    if not self._pending:
      return
    arrays = {k: np.stack([step[k] for step in self._pending]) for k in self._pending[0]}
    name = f'chunk_{len(self.manifest["chunks"]):05d}.npz'
    path = os.path.join(self.directory, name)
    np.savez_compressed(path, **arrays)
    steps = len(self._pending)
    self.manifest['chunks'].append({'file': name, 'steps': steps, 'sha256': _sha256(path)})
    self.manifest['steps'] += steps
    self._pending = []

  def close(self) -> dict:
    """Writes the last chunk and the manifest; returns the manifest."""
    self._flush()
    returns = np.asarray(self._finished)
    self.manifest['episodes'] = len(returns)
    self.manifest['episode_return'] = ({'mean': float(returns.mean()), 'min': float(returns.min()),
                                        'max': float(returns.max())} if len(returns) else {})
    with open(os.path.join(self.directory, MANIFEST), 'w') as f:
      json.dump(self.manifest, f, indent=2)
    return self.manifest


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{directory} holds no {MANIFEST}; record a dataset with '
                            'scripts/record.py')
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get('format') != FORMAT:
    raise ValueError(f'{path} has format {manifest.get("format")!r}; this version reads {FORMAT}')
  return manifest


def check_spaces(manifest: dict, task: str, obs_space: dict, discrete: bool,
                 action_size: int) -> None:
  """Raises ValueError naming what to change when the dataset does not fit the configured env."""
  problems = []
  if manifest['task'] != task:
    problems.append(f'it was recorded on {manifest["task"]!r}, the config names {task!r}: set '
                    f'--config.task={manifest["task"]}')
  recorded = {k: (tuple(shape), dtype) for k, (shape, dtype) in manifest['obs_space'].items()}
  wanted = {k: (tuple(shape), np.dtype(dtype).name) for k, (shape, dtype) in obs_space.items()}
  if recorded != wanted:
    problems.append(f'its observations are {recorded}, the env gives {wanted}: match '
                    '--config.env.image_size / --config.env.from_pixels to the recording, or '
                    'record again with this config')
  action = manifest['action']
  if (action['discrete'], action['size']) != (bool(discrete), int(action_size)):
    problems.append(f'its actions are {action}, the env has discrete={discrete}, '
                    f'size={action_size}')
  if problems:
    raise ValueError('dataset does not match the config: ' + '; '.join(problems))


def spec(manifest: dict) -> dict:
  """The replay spec of the dataset's steps (as `run.common.replay_spec` gives for the env)."""
  fields = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype)
            in manifest['obs_space'].items()}
  return {**fields, 'action': ((manifest['action']['size'],), np.dtype(np.float32)),
          'reward': ((), np.dtype(np.float32)), 'is_first': ((), np.dtype(bool)),
          'is_last': ((), np.dtype(bool)), 'is_terminal': ((), np.dtype(bool))}


def chunks(directory: str, manifest: dict) -> Iterator[dict[str, np.ndarray]]:
  """Yields the readable chunks `{field: [t, N, ...]}` in order; warns about and skips the others
  (after a skipped one, the next yielded chunk starts with `is_first`)."""
  fields = spec(manifest)
  gap = False
  for entry in manifest['chunks']:
    path = os.path.join(directory, entry['file'])
    try:
      if _sha256(path) != entry['sha256']:
        raise ValueError('checksum mismatch (truncated or changed)')
      with np.load(path) as data:
        arrays = {k: data[k] for k in fields}
      if any(len(v) != entry['steps'] for v in arrays.values()):
        raise ValueError(f'holds a different number of steps than the {entry["steps"]} listed')
    except (OSError, ValueError, KeyError) as error:
      logging.warning('Skipping dataset chunk %s: %s', path, error)
      gap = True
      continue
    if gap:
      arrays['is_first'][0] = True
      arrays['action'][0] = 0.0
      arrays['reward'][0] = 0.0
      gap = False
    yield arrays


def load(directory: str, manifest: dict, replay_state: Any,
         add_steps: Callable[[Any, dict], Any]) -> tuple[Any, int]:
  """Streams the dataset into `replay_state` with `add_steps(replay, steps [t, N, ...])`;
  returns the replay and the steps per env loaded."""
  loaded = 0
  for arrays in chunks(directory, manifest):
    replay_state = add_steps(replay_state, arrays)
    loaded += len(arrays['is_first'])
  if not loaded:
    raise ValueError(f'no chunk of the dataset in {directory} could be read')
  return replay_state, loaded


def replay_steps(replay_state: Any) -> dict[str, np.ndarray]:
  """The steps a replay holds, oldest first, as `{field: [t, N, ...]}` (N over all shards); the
  first step is marked `is_first` (after the ring wrapped it is mid-episode)."""
  data = {k: np.asarray(v) for k, v in replay_state.data.items()}
  shards, envs, capacity = next(iter(data.values())).shape[:3]
  position = int(np.asarray(replay_state.position))
  held = min(position, capacity)
  index = (position - held + np.arange(held)) % capacity
  steps = {k: np.swapaxes(v[:, :, index].reshape(shards * envs, held, *v.shape[3:]), 0, 1)
           for k, v in data.items()}
  steps['is_first'][0] = True
  steps['action'][0] = 0.0
  steps['reward'][0] = 0.0
  return steps


def record(writer: Writer, env: Any, steps: int,
           act: Callable[[dict], tuple[np.ndarray, np.ndarray]]) -> dict:
  """Steps `env` (N envs, step dicts as in `envs`) for at least `steps` env steps in all, acting
  with `act(step) -> (model action [N, A], env action)`, and writes every step the way the online
  loop adds it to replay. Returns the manifest."""
  step = env.reset()
  num_envs = len(step['is_first'])
  writer.add({**step, 'action': np.zeros((num_envs, writer.manifest['action']['size']),
                                         np.float32)})
  for _ in range(-(-steps // num_envs)):
    model_action, env_action = act(step)
    step = env.step(env_action)
    writer.add({**step, 'action': model_action * ~step['is_first'][:, None]})
  return writer.close()
