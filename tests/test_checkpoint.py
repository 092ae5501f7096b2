"""Checkpointer: round trip, retention, fallback past broken steps, sharded restore."""

import gc
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.data import replay
from dreamerjax.run.checkpoint import Checkpointer

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


def corrupt(step_directory: pathlib.Path, how: str) -> None:
    """Damages every file under the step's state directory."""
    for path in (step_directory / 'state').rglob('*'):
        if path.is_file():
            size = path.stat().st_size
            path.write_bytes(b'' if how == 'truncate' else bytes(size))


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


@pytest.mark.parametrize('how', ['truncate', 'zero'])
def test_corrupt_newest_falls_back_with_warning(tmp_path, caplog, how):
    save_steps(tmp_path, [1, 2])
    corrupt(tmp_path / '2', how)
    checkpointer = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        step, restored, meta = checkpointer.restore_latest(jax.eval_shape(make_state))
    assert step == 1 and meta == {'step': 1}
    assert_trees_equal(restored, make_state(1))
    assert any('step 2' in record.getMessage() for record in caplog.records
               if record.levelno == logging.WARNING), caplog.text
    # The broken step was moved aside, so the resumed run can save step 2 again.
    assert (tmp_path / '2.unrestorable').is_dir() and checkpointer.all_steps() == [1]
    checkpointer.save(2, make_state(2), {'step': 2})
    assert checkpointer.restore_latest(make_state(2))[0] == 2
    checkpointer.close()


def test_empty_numbered_directory_is_skipped(tmp_path):
    save_steps(tmp_path, [3])
    os.makedirs(tmp_path / '7')
    checkpointer = Checkpointer(str(tmp_path))
    assert checkpointer.latest_step() == 7  # orbax trusts it; restore_latest must not
    step, _, meta = checkpointer.restore_latest(make_state(3))
    assert step == 3 and meta == {'step': 3}
    checkpointer.close()


def test_all_corrupt_raises_helpful_error(tmp_path):
    save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        corrupt(tmp_path / str(step), 'truncate')
    checkpointer = Checkpointer(str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        checkpointer.restore_latest(make_state())
    message = str(error.value)
    assert 'step 1' in message and 'step 2' in message
    assert 'delete' in message and '--config.run.force=True' in message
    assert checkpointer.all_steps() == [1, 2]  # nothing moved when nothing restored
    checkpointer.close()


def test_mismatched_target_is_rejected(tmp_path):
    save_steps(tmp_path, [1])
    target = jax.eval_shape(make_state)
    target['params']['weight'] = jax.ShapeDtypeStruct((3, 3), jnp.bfloat16)
    checkpointer = Checkpointer(str(tmp_path))
    with pytest.raises(RuntimeError, match='could be restored'):
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
