"""Checkpoints: a thin wrapper over orbax's `CheckpointManager` that never trusts a broken step.

Each step directory holds ``state/`` (any pytree of jax or numpy arrays: train state, replay,
counters, rng) and ``meta/`` (a JSON-able dict: config, counters). Saving is asynchronous by
default; call `wait` before reading the files and `close` at the end.

Every step's meta holds a checksum of each array it saved (`integrity`). orbax lists an empty or
half-written numbered directory as a step, and restores files whose values were changed after
saving (a bad copy, bit rot) without a word, so `restore_latest` tries steps newest first and
takes the first that reads back whole with the checksums saved with it and finite values where
`finite` asks for them. The steps it could not use are moved aside (``<step>.corrupt``) and named
in the log, so the resumed run can save those step numbers again. A full or failing disk raises
`errors.StorageError` from `save`, `check`, `wait` or `close`; the steps written before stay
complete (orbax writes a step in a temporary directory and renames it when done).

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
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from dreamerjax.run import errors, integrity

# The meta key of the checksums of a step's arrays (see `integrity`).
INTEGRITY_KEY = 'integrity'


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


def _failure(error: BaseException) -> str:
    return f'{type(error).__name__}: {" ".join(str(error).split())[:300]}'


def _verify(step: int, stored: Any, meta: Any, finite: Callable[[str], bool]) -> None:
    """Raises ValueError if `stored` (the restored storage tree) is not what was saved as `step`:
    meta missing or of another step, a checksum that differs, or non-finite values where
    `finite(path)` asks for finite ones. Steps saved without checksums (by an older version) are
    only checked for finite values."""
    if not isinstance(meta, dict):
        raise ValueError(f'meta is {type(meta).__name__}, not a dict (missing or unreadable)')
    summary = integrity.summarize(stored)
    record = meta.get(INTEGRITY_KEY)
    if record is None:
        logging.warning('Checkpoint step %d has no checksums (saved by an older version): its '
                        'values are only checked for being finite.', step)
    elif record.get('step') != step:
        raise ValueError(f'its meta belongs to step {record.get("step")} (steps mixed up)')
    else:
        saved = record.get('leaves', {})
        differ = [path for path, (checksum, _) in summary.items() if saved.get(path) != checksum]
        if differ or set(saved) != set(summary):
            raise ValueError(f'the checksums of {len(differ) or "some"} of {len(summary)} arrays '
                             f'differ from those saved with it ({", ".join(differ[:3])})')
    bad = [path for path, (_, is_finite) in summary.items() if not is_finite and finite(path)]
    if bad:
        raise ValueError(f'{len(bad)} arrays hold NaN or inf ({", ".join(bad[:3])})')


class Checkpointer:
    """Saves and restores ``(step, state, meta)`` under one directory, keeping the newest few."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 finite: Callable[[str], bool] = lambda path: True, writer: bool = True):
        """
        Args:
            directory: where numbered step directories go; created if missing.
            keep: how many of the newest steps to keep on disk.
            async_save: if True, `save` returns at once and writes in the background.
            finite: which leaves (by `jax.tree_util.keystr` path) must hold only finite values
                (floating leaves only), checked when saving and restoring.
            writer: False for a reader of another process's run: it moves no step aside and
                leaves half-written ones alone.
        """
        if keep < 1:
            raise ValueError(f'Checkpointer keep={keep} must be at least 1.')
        self.directory = os.path.abspath(os.fspath(directory))
        self.finite, self.writer = finite, writer
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            save_interval_steps=1,
            create=True,
            cleanup_tmp_directories=writer,  # what a killed or failed save left behind
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_check = 0.0
        self._unconfirmed: int | None = None  # saved in the background, not yet seen on disk

    def _raise_as_user_error(self, error: BaseException, doing: str) -> None:
        """Raises `error` as a `StorageError` if it is a storage fault (re-raises it otherwise)."""
        complete = self._complete_steps()
        fault = errors.storage_error(error, f'{doing} in {self.directory}',
                                     f'step {complete[-1]}' if complete else 'none')
        if fault is None:
            raise error
        errors.clear_pending()  # the same fault, as orbax's threads reported it
        raise fault from error

    def _complete_steps(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> None:
        """Saves ``state`` and ``meta`` as ``step``, with a checksum of every array in the meta.

        A step that is already on disk is left alone (saving the same step twice, e.g. a
        periodic save followed by the final one, is a no-op) unless ``force`` is True, in which
        case it is replaced.

        Args:
            step: the step number (for example env steps so far).
            state: pytree of jax or numpy arrays.
            meta: JSON-able dict.
            force: replace an existing checkpoint of the same step.
        Raises:
            FloatingPointError: leaves that `finite` names hold NaN or inf (nothing is saved).
            errors.StorageError: the disk is full or failing (this or the previous save).
        """
        try:  # a copy: orbax writes it in the background, while the caller's dicts move on
            meta = json.loads(json.dumps(meta))
        except TypeError as error:
            raise TypeError(f'checkpoint meta must be JSON-able: {error}') from error
        if INTEGRITY_KEY in meta:
            raise ValueError(f'{INTEGRITY_KEY!r} is reserved in checkpoint meta')
        state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
        step = int(step)
        if step in self._manager.all_steps() and not force:
            logging.info('Checkpoint step %d already exists; not saving it again.', step)
            return
        summary = integrity.summarize(state)
        bad = [path for path, (_, finite) in summary.items() if not finite and self.finite(path)]
        if bad:
            raise FloatingPointError(
                f'not saving checkpoint step {step}: {len(bad)} arrays hold NaN or inf '
                f'({", ".join(bad[:3])}); the older checkpoints are kept as they are')
        meta = {**meta, INTEGRITY_KEY: {'step': step, 'leaves': {
            path: checksum for path, (checksum, _) in summary.items()}}}
        try:
            if step in self._manager.all_steps():
                self._manager.wait_until_finished()
                self._manager.delete(step)
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as error:  # noqa: BLE001 - storage faults become StorageError
            self._raise_as_user_error(error, f'saving checkpoint step {step}')
        self._unconfirmed = step

    def check(self, every_seconds: float = 1.0) -> None:
        """Raises the fault of a background save (or of another background thread, see
        `errors.raise_pending`) at most `every_seconds` after it happened; cheap, for calling
        every step."""
        now = time.monotonic()
        if now - self._last_check < every_seconds:
            return
        self._last_check = now
        try:
            errors.raise_pending()  # what orbax's threads logged, seen by errors' hooks
        except errors.StorageError as fault:
            self._raise_as_user_error(fault, 'saving a checkpoint')
        if self._unconfirmed is not None and not self._manager.is_saving_in_progress():
            self._confirm()

    def _confirm(self) -> None:
        """Waits for the background save and raises if its step is not on disk (orbax's own
        finalize thread takes the error of a failed save; waiting re-raises it)."""
        step, self._unconfirmed = self._unconfirmed, None
        self.wait()
        if step is not None and not os.path.isdir(os.path.join(self.directory, str(step))):
            raise errors.CheckpointError(f'checkpoint step {step} was not written to '
                                         f'{self.directory} (see the log)')

    def latest_step(self) -> int | None:
        """The newest step orbax lists (not validated: it may be empty or corrupt)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step orbax lists, oldest first."""
        return sorted(self._manager.all_steps())

    def _restore_step(self, step: int, stored_abstract: Any) -> tuple[Any, dict]:
        """The verified storage tree and meta of `step`; raises if it is not what was saved."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(stored_abstract), meta=ocp.args.JsonRestore()))
        _check_matches(restored.state, stored_abstract)
        _verify(step, restored.state, restored.meta, self.finite)
        return restored.state, dict(restored.meta)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest step that reads back whole and verifies (checksums, finite
        values); steps newer than it are moved aside as ``<step>.corrupt`` and named in the log.

        Args:
            abstract_state: pytree like the saved state whose leaves are `jax.ShapeDtypeStruct`
                (with the target shardings) or arrays; e.g. ``jax.eval_shape(make_state)``.
        Returns:
            ``(step, state, meta)``, or None if the directory holds no checkpoint.
        Raises:
            errors.CheckpointError: steps exist but none of them restores (none is moved).
        """
        self.wait()
        self._manager.reload()
        abstract_state = jax.tree.map(_to_abstract, abstract_state)
        stored_abstract = jax.tree.map(_storage_abstract, abstract_state)
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                stored, meta = self._restore_step(step, stored_abstract)
            except Exception as error:  # noqa: BLE001 - any failure means "try an older step"
                logging.warning('Checkpoint step %d in %s is damaged (%s); trying an older step.',
                                step, self.directory, _failure(error))
                failures.append(step)
                continue
            if failures:
                self._move_aside(failures)
            logging.info('Restored checkpoint step %d from %s (checksums verified).', step,
                         self.directory)
            state = jax.tree.map(
                lambda value, target: jax.random.wrap_key_data(value, impl=_key_impl(target))
                if _is_key(target) else value, stored, abstract_state)
            meta.pop(INTEGRITY_KEY, None)
            return step, state, meta
        if not failures:
            return None
        raise errors.CheckpointError(
            f'none of the {len(failures)} checkpoints in {self.directory} (steps '
            f'{", ".join(map(str, sorted(failures)))}) restores whole (see the warnings above); '
            'to start the run over, pass --config.run.force=True (deletes them) or move '
            f'{self.directory} away')

    def _move_aside(self, steps: list[int]) -> None:
        """Renames damaged step directories (``<step>.corrupt``) so orbax no longer lists them
        and the resumed run can save those step numbers again."""
        if self.writer and jax.process_index() == 0:
            for step in steps:
                source = os.path.join(self.directory, str(step))
                target, suffix = source + '.corrupt', 1
                while os.path.exists(target):
                    target, suffix = f'{source}.corrupt{suffix}', suffix + 1
                if os.path.isdir(source):
                    os.rename(source, target)
                    logging.warning('Moved damaged checkpoint step %d aside to %s.', step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices('dreamerjax: damaged checkpoints moved')
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until a background save has finished."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            self._raise_as_user_error(error, 'saving a checkpoint')

    def close(self) -> None:
        """Waits for pending saves (raising if one failed) and releases the manager."""
        try:
            self._confirm()
        finally:
            self._manager.close()

    def abandon(self) -> None:
        """Releases the manager after an error, without raising: the step being written may be
        lost, the complete ones are not."""
        try:
            self.close()
        except Exception as error:  # noqa: BLE001 - the error that ended the run is reported
            logging.debug('While closing the checkpointer after an error: %s', _failure(error))
