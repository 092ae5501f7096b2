"""Ways to damage a checkpoint step directory (of `dreamerjax.run.checkpoint.Checkpointer`), as
disks, copies and crashes do: unreadable files, mixed-up steps, values changed after saving."""

import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp


def corrupt(step_directory: pathlib.Path, how: str) -> None:
    """Damages every file under the step's state directory."""
    for path in (step_directory / 'state').rglob('*'):
        if path.is_file():
            size = path.stat().st_size
            path.write_bytes(b'' if how == 'truncate' else bytes(size))


def flip_bytes(step_directory: pathlib.Path) -> None:
    """Flips a few bytes in the middle of the largest data file (bit rot)."""
    path = max((p for p in (step_directory / 'state').rglob('*') if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_values(step_directory: pathlib.Path, change) -> None:
    """Rewrites the step's arrays as valid orbax files holding `change(arrays)`, keeping the
    step's meta: what a bad copy or a tool that edits checkpoints leaves."""
    state = step_directory / 'state'
    raw = ocp.StandardCheckpointer()
    arrays = jax.tree.map(np.array, raw.restore(state))
    raw.save(step_directory / 'state.rewritten', change(arrays))
    raw.wait_until_finished()
    shutil.rmtree(state)
    os.rename(step_directory / 'state.rewritten', state)


def set_huge(arrays):
    """Sets part of the first leaves under a `params` key to 1e30 (still finite)."""
    leaves = [path for path in _paths(arrays) if 'params' in path and 'opt_state' not in path][:3]
    for path in leaves:
        leaf = _get(arrays, path)
        leaf.reshape(-1)[:max(1, leaf.size // 2)] = 1e30
    return arrays


def _paths(tree, prefix=()):
    if isinstance(tree, dict):
        return [p for key in sorted(tree) for p in _paths(tree[key], prefix + (key,))]
    if isinstance(tree, (list, tuple)):
        return [p for index, item in enumerate(tree) for p in _paths(item, prefix + (index,))]
    return [prefix] if jax.numpy.issubdtype(np.asarray(tree).dtype, jax.numpy.floating) else []


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def damage(directory: pathlib.Path, step: int, how: str) -> None:
    step_directory = directory / str(step)
    if how in ('truncate', 'zero'):
        corrupt(step_directory, how)
    elif how == 'flip':
        flip_bytes(step_directory)
    elif how == 'delete_meta':
        shutil.rmtree(step_directory / 'meta')
    elif how == 'state_of_older_step':
        shutil.rmtree(step_directory / 'state')
        shutil.copytree(directory / str(step - 1) / 'state', step_directory / 'state')
    elif how == 'meta_of_older_step':
        shutil.rmtree(step_directory / 'meta')
        shutil.copytree(directory / str(step - 1) / 'meta', step_directory / 'meta')
    elif how == 'values_set_to_1e30':
        rewrite_values(step_directory, set_huge)
    elif how == 'values_set_to_nan':
        rewrite_values(step_directory, lambda arrays: {
            **arrays, 'params': jax.tree.map(lambda x: x * np.nan, arrays['params'])})
    else:
        raise ValueError(how)
