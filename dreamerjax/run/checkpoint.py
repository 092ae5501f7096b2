"""Checkpoints: a thin wrapper over orbax's `CheckpointManager` that never trusts a broken step.

Each step directory holds ``state/`` (any pytree of jax or numpy arrays: train state, replay,
counters, rng) and ``meta/`` (a JSON-able dict: config, counters). Saving is asynchronous by
default; call `wait` before reading the files and `close` at the end.

orbax lists an empty or half-written numbered directory as a step and only fails when restoring
it, so `restore_latest` tries steps newest first and falls back to older ones, moving the steps
it could not read aside (``<step>.unrestorable``) so the resumed run can save those step numbers
again.

    checkpointer = Checkpointer(workdir + '/checkpoints', keep=3)
    restored = checkpointer.restore_latest(jax.eval_shape(make_state))
    if restored is not None:
        step, state, meta = restored
    checkpointer.save(step, state, {'config': config.to_dict()})
    checkpointer.close()
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def _to_abstract(leaf: Any) -> Any:
    """Leaves may be arrays or `jax.ShapeDtypeStruct`s (which keep their target sharding)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    return ocp.utils.to_shape_dtype_struct(leaf)


def _is_key(leaf: Any) -> bool:
    """Typed PRNG keys (`jax.random.key`) are stored as their uint32 key data."""
    return hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _key_impl(abstract_key: jax.ShapeDtypeStruct) -> Any:
    """The PRNG implementation of an abstract key, read while tracing (no public accessor)."""
    found = []
    jax.eval_shape(lambda key: found.append(jax.random.key_impl(key)) or jnp.zeros(()),
                   abstract_key)
    return found[0]


def _storage_abstract(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """What a leaf is stored as: itself, or a key's uint32 data ``[..., key_size]``."""
    if not _is_key(leaf):
        return leaf
    data = jax.eval_shape(jax.random.key_data, leaf)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=leaf.sharding)


def _check_matches(restored: Any, abstract_state: Any) -> None:
    """Raises ValueError if the restored tree differs from the target in structure or shapes."""
    restored_structure = jax.tree.structure(restored)
    target_structure = jax.tree.structure(abstract_state)
    if restored_structure != target_structure:
        raise ValueError(f'restored tree structure {restored_structure} differs from the '
                         f'target {target_structure}')
    targets = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    for (path, want), got in zip(targets, jax.tree.leaves(restored), strict=True):
        if tuple(np.shape(got)) != tuple(want.shape) or np.dtype(got.dtype) != want.dtype:
            raise ValueError(f'restored leaf {jax.tree_util.keystr(path)} is {np.shape(got)} '
                             f'{got.dtype}, expected {want.shape} {want.dtype}')


class Checkpointer:
    """Saves and restores ``(step, state, meta)`` under one directory, keeping the newest few."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        """
        Args:
            directory: where numbered step directories go; created if missing.
            keep: how many of the newest steps to keep on disk.
            async_save: if True, `save` returns at once and writes in the background.
        """
        if keep < 1:
            raise ValueError(f'Checkpointer keep={keep} must be at least 1.')
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            save_interval_steps=1,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> None:
        """Saves ``state`` and ``meta`` as ``step``.

        A step that is already on disk is left alone (saving the same step twice, e.g. a
        periodic save followed by the final one, is a no-op) unless ``force`` is True, in which
        case it is replaced.

        Args:
            step: the step number (for example env steps so far).
            state: pytree of jax or numpy arrays.
            meta: JSON-able dict.
            force: replace an existing checkpoint of the same step.
        """
        try:
            json.dumps(meta)
        except TypeError as error:
            raise TypeError(f'checkpoint meta must be JSON-able: {error}') from error
        state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
        step = int(step)
        if step in self._manager.all_steps():
            if not force:
                logging.info('Checkpoint step %d already exists; not saving it again.', step)
                return
            self._manager.wait_until_finished()
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def latest_step(self) -> int | None:
        """The newest step orbax lists (not validated: it may be empty or corrupt)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step orbax lists, oldest first."""
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest step that reads back whole.

        Args:
            abstract_state: pytree like the saved state whose leaves are `jax.ShapeDtypeStruct`
                (with the target shardings) or arrays; e.g. ``jax.eval_shape(make_state)``.
        Returns:
            ``(step, state, meta)``, or None if the directory holds no checkpoint.
        Raises:
            RuntimeError: steps exist but none of them restores.
        """
        self.wait()
        self._manager.reload()
        abstract_state = jax.tree.map(_to_abstract, abstract_state)
        stored_abstract = jax.tree.map(_storage_abstract, abstract_state)
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(stored_abstract),
                    meta=ocp.args.JsonRestore()))
                _check_matches(restored.state, stored_abstract)
                if not isinstance(restored.meta, dict):
                    raise ValueError(f'meta is {type(restored.meta).__name__}, not a dict')
            except Exception as error:  # noqa: BLE001 - any failure means "try an older step"
                message = f'{type(error).__name__}: {str(error)[:500]}'
                logging.warning('Could not restore checkpoint step %d in %s (%s); trying an '
                                'older step.', step, self.directory, message)
                failures.append((step, message))
                continue
            if failures:
                self._move_aside([failed for failed, _ in failures])
            logging.info('Restored checkpoint step %d from %s.', step, self.directory)
            state = jax.tree.map(
                lambda value, target: jax.random.wrap_key_data(value, impl=_key_impl(target))
                if _is_key(target) else value, restored.state, abstract_state)
            return step, state, dict(restored.meta)
        if not failures:
            return None
        listing = '\n'.join(f'  step {step}: {message}' for step, message in failures)
        raise RuntimeError(
            f'No checkpoint in {self.directory} could be restored:\n{listing}\nTo start over, '
            f'delete {self.directory} (or the whole workdir), or pass --config.run.force=True.')

    def _move_aside(self, steps: list[int]) -> None:
        """Renames unreadable step directories so orbax no longer lists them."""
        if jax.process_index() == 0:
            for step in steps:
                source = os.path.join(self.directory, str(step))
                target, suffix = source + '.unrestorable', 1
                while os.path.exists(target):
                    target, suffix = f'{source}.unrestorable{suffix}', suffix + 1
                if os.path.isdir(source):
                    os.rename(source, target)
                    logging.warning('Moved unrestorable checkpoint %s to %s.', source, target)
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until a background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
