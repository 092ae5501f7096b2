"""Checkpointer: round trip, retention, fallback past damaged steps (unreadable files, mixed-up
steps, values changed after saving), sharded restore."""

import errno
import gc
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dreamerjax.data import replay
from dreamerjax.run import errors
from dreamerjax.run.checkpoint import Checkpointer
from tests.damage import damage

# A failed orbax restore leaves coroutines that are garbage-collected later (possibly during
# another test) and reported as unraisable exceptions; the failures themselves are asserted.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(autouse=True)
def collect_orbax_leftovers():
    """Collects those coroutines inside this file's tests, where the filter above applies."""
    yield
    gc.collect()


def make_state(scale: int = 1) -> dict:
    return {
        'params': {'weight': jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) * scale},
        'counts': np.arange(4, dtype=np.uint8) * scale,
        'step': jnp.int32(7 * scale),
        'rng': jax.random.key(scale),
        'replay': replay.init({'obs': ((2,), jnp.float32)}, num_envs=2, capacity=8),
    }


def assert_trees_equal(got, expected):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected),
                                       strict=True):
        if jnp.issubdtype(expected_leaf.dtype, jax.dtypes.prng_key):
            assert got_leaf.dtype == expected_leaf.dtype
            got_leaf, expected_leaf = jax.random.key_data(got_leaf), jax.random.key_data(
                expected_leaf)
        assert got_leaf.dtype == expected_leaf.dtype
        np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(expected_leaf))


def save_steps(directory, steps, keep=3) -> None:
    checkpointer = Checkpointer(str(directory), keep=keep)
    for step in steps:
        checkpointer.save(step, make_state(step), {'step': step})
    checkpointer.close()


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    state = make_state(2)
    meta = {'config': {'size': '12m', 'learning_rate': 1e-4}, 'env_steps': 1234}
    checkpointer = Checkpointer(str(tmp_path))
    assert checkpointer.restore_latest(jax.eval_shape(lambda: state)) is None
    checkpointer.save(10, state, meta)
    step, restored, restored_meta = checkpointer.restore_latest(jax.eval_shape(lambda: state))
    checkpointer.close()
    assert step == 10 and restored_meta == meta
    assert_trees_equal(restored, state)
    assert isinstance(restored['replay'], replay.ReplayState)


def test_meta_is_saved_as_it_was_when_save_was_called(tmp_path, monkeypatch):
    # orbax writes the meta in the background, after the arrays: the loop's counters go on
    # changing meanwhile, so the meta written must not be (or hold) the caller's dicts.
    written, json_save = [], ocp.args.JsonSave
    monkeypatch.setattr(ocp.args, 'JsonSave', lambda item: written.append(item) or json_save(item))
    counters = {'env_step': 10}
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(10, make_state(1), {'counters': counters})
    counters['env_step'] = 14
    assert written[0]['counters'] == {'env_step': 10} and written[0]['counters'] is not counters
    assert checkpointer.restore_latest(jax.eval_shape(make_state))[2] == {
        'counters': {'env_step': 10}}
    checkpointer.close()


def test_keep_latest_n_and_repeated_step(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), keep=2)
    for step in range(5):
        checkpointer.save(step, make_state(1), {'step': step})
    checkpointer.save(4, make_state(1), {'step': 'ignored'})  # already saved: no-op
    checkpointer.wait()
    assert checkpointer.all_steps() == [3, 4] and checkpointer.latest_step() == 4
    assert checkpointer.restore_latest(make_state(1))[2] == {'step': 4}
    checkpointer.save(4, make_state(1), {'step': 'replaced'}, force=True)
    assert checkpointer.restore_latest(make_state(1))[2] == {'step': 'replaced'}
    checkpointer.close()


DAMAGES = ['truncate', 'zero', 'flip', 'delete_meta', 'state_of_older_step',
           'meta_of_older_step', 'values_set_to_1e30', 'values_set_to_nan']


@pytest.mark.reliability
@pytest.mark.parametrize('how', DAMAGES)
def test_damaged_newest_step_falls_back_to_the_next_good_one(tmp_path, caplog, figure, how):
    figure('corrupt checkpoints recovered')
    save_steps(tmp_path, [1, 2, 3])
    damage(tmp_path, 3, how)
    checkpointer = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        step, restored, meta = checkpointer.restore_latest(jax.eval_shape(make_state))
    assert step == 2 and meta == {'step': 2}
    assert_trees_equal(restored, make_state(2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('step 3' in message and 'damaged' in message for message in warnings), warnings
    # The damaged step was moved aside, so the resumed run can save step 3 again.
    assert (tmp_path / '3.corrupt').is_dir() and checkpointer.all_steps() == [1, 2]
    checkpointer.save(3, make_state(3), {'step': 3})
    assert checkpointer.restore_latest(make_state(3))[0] == 3
    checkpointer.close()


@pytest.mark.reliability
def test_two_damaged_steps_fall_back_to_the_oldest(tmp_path, figure):
    figure('corrupt checkpoints recovered')
    save_steps(tmp_path, [1, 2, 3])
    damage(tmp_path, 3, 'values_set_to_1e30')
    damage(tmp_path, 2, 'flip')
    checkpointer = Checkpointer(str(tmp_path))
    step, _, meta = checkpointer.restore_latest(make_state())
    assert step == 1 and meta == {'step': 1}
    assert {p.name for p in tmp_path.iterdir()} == {'1', '2.corrupt', '3.corrupt'}
    checkpointer.close()


def test_non_finite_state_is_not_saved(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), finite=lambda path: 'params' in path)
    checkpointer.save(1, make_state(1), {'step': 1})
    state = make_state(2)
    state['params']['weight'] = state['params']['weight'].at[0, 0].set(jnp.inf)
    with pytest.raises(FloatingPointError, match=r'not saving checkpoint step 2.*params'):
        checkpointer.save(2, state, {'step': 2})
    assert checkpointer.restore_latest(make_state())[0] == 1
    checkpointer.close()


def test_step_saved_without_checksums_restores_with_a_warning(tmp_path, caplog):
    save_steps(tmp_path, [4])
    meta_file = next((tmp_path / '4' / 'meta').rglob('metadata'))
    meta_file.write_text(json.dumps({'step': 4}))  # as an older version wrote it
    checkpointer = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        step, restored, meta = checkpointer.restore_latest(jax.eval_shape(make_state))
    assert step == 4 and meta == {'step': 4}
    assert_trees_equal(restored, make_state(4))
    assert 'no checksums' in caplog.text
    checkpointer.close()


def test_empty_numbered_directory_is_skipped(tmp_path):
    save_steps(tmp_path, [3])
    os.makedirs(tmp_path / '7')
    checkpointer = Checkpointer(str(tmp_path))
    assert checkpointer.latest_step() == 7  # orbax trusts it; restore_latest must not
    step, _, meta = checkpointer.restore_latest(make_state(3))
    assert step == 3 and meta == {'step': 3}
    checkpointer.close()


@pytest.mark.reliability
def test_all_damaged_raises_one_clear_error(tmp_path, figure):
    figure('no good checkpoint: one clear message')
    save_steps(tmp_path, [1, 2])
    damage(tmp_path, 1, 'truncate')
    damage(tmp_path, 2, 'values_set_to_1e30')
    checkpointer = Checkpointer(str(tmp_path))
    with pytest.raises(errors.CheckpointError) as error:
        checkpointer.restore_latest(make_state())
    message = str(error.value)
    assert '\n' not in message and 'steps 1, 2' in message
    assert '--config.run.force=True' in message and 'move' in message
    assert checkpointer.all_steps() == [1, 2]  # nothing moved when nothing restored
    checkpointer.close()


def test_mismatched_target_is_rejected(tmp_path):
    save_steps(tmp_path, [1])
    target = jax.eval_shape(make_state)
    target['params']['weight'] = jax.ShapeDtypeStruct((3, 3), jnp.bfloat16)
    checkpointer = Checkpointer(str(tmp_path))
    with pytest.raises(errors.CheckpointError, match='restores whole'):
        checkpointer.restore_latest(target)
    checkpointer.close()


def test_meta_must_be_json(tmp_path):
    checkpointer = Checkpointer(str(tmp_path))
    with pytest.raises(TypeError, match='JSON'):
        checkpointer.save(1, make_state(), {'bad': object()})
    checkpointer.close()


def test_restore_unsharded_save_onto_eight_devices(tmp_path, run_with_devices):
    output = run_with_devices(f'''
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from dreamerjax.run.checkpoint import Checkpointer
        state = {{'weight': jnp.arange(32.0).reshape(16, 2), 'data': np.arange(16, dtype=np.int32),
                 'step': jnp.int32(3), 'rng': jax.random.key(5)}}
        checkpointer = Checkpointer({str(tmp_path)!r})
        checkpointer.save(5, state, {{'note': 'unsharded'}})
        checkpointer.close()

        mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
        split, replicated = NamedSharding(mesh, PartitionSpec('data')), NamedSharding(
            mesh, PartitionSpec())
        target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype),
                              jax.eval_shape(lambda: state))
        target = {{name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                              sharding=split if leaf.ndim else replicated)
                  for name, leaf in target.items()}}
        step, restored, meta = Checkpointer({str(tmp_path)!r}).restore_latest(target)
        assert step == 5 and meta == {{'note': 'unsharded'}}
        for name in ('weight', 'data'):
            assert restored[name].sharding == split, restored[name].sharding
            assert len(restored[name].addressable_shards) == 8
            np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(state[name]))
        assert restored['step'].sharding == replicated and int(restored['step']) == 3
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(restored['rng'])),
                                      np.asarray(jax.random.key_data(state['rng'])))
        print('ok')
    ''')
    assert 'ok' in output


@pytest.mark.reliability
def test_full_disk_in_a_background_save_is_raised_within_a_second(tmp_path, monkeypatch, figure):
    from orbax.checkpoint._src.path import atomicity

    figure('I/O faults ending the run with one clear error')
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(1, make_state(1), {'step': 1})
    checkpointer.wait()
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def full_disk(self, *args, **kwargs):
        if self._final_path.name.isdigit():  # the step directory (not its items)
            raise OSError(errno.ENOSPC, 'No space left on device')
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', full_disk)
    checkpointer.save(2, make_state(2), {'step': 2})  # returns at once; fails in the background
    start = time.monotonic()
    with pytest.raises(errors.StorageError) as error:
        while time.monotonic() - start < 30:
            checkpointer.check(every_seconds=0.1)
            time.sleep(0.05)
    assert time.monotonic() - start < 5
    assert 'no space left on device' in str(error.value)
    assert 'newest complete checkpoint: step 1' in str(error.value)
    checkpointer.abandon()
    monkeypatch.undo()
    reopened = Checkpointer(str(tmp_path))
    assert reopened.restore_latest(jax.eval_shape(make_state))[0] == 1
    reopened.close()
    deadline = time.monotonic() + 10  # orbax removes the half-written step in the background
    while list(tmp_path.glob('*tmp*')) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(tmp_path.glob('*tmp*'))
