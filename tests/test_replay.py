"""Replay invariants: layout, contents, wrap-around, validation, jit, and sharded == unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.data import replay

# Each step stores `value = 1000 * env + time`, so a sampled row tells which env and which
# times it came from.
SPEC = {'value': ((), jnp.int32), 'obs': ((3,), jnp.float32), 'is_first': ((), jnp.bool_)}

jitted_sample = jax.jit(replay.sample, static_argnames=('batch_size', 'length', 'recency'))


def make_step(time: int, num_envs: int) -> dict:
    """One step of every env, as host numpy arrays (as an env would return them)."""
    return {
        'value': (1000 * np.arange(num_envs) + time).astype(np.int32),
        'obs': np.full((num_envs, 3), time, np.float32),
        'is_first': np.full((num_envs,), time == 0),
    }


def filled(num_envs: int, capacity: int, steps: int, num_shards: int = 1):
    state = replay.init(SPEC, num_envs, capacity, num_shards)
    add = jax.jit(replay.add, donate_argnums=0)
    for time in range(steps):
        state = add(state, make_step(time, num_envs))
    return state


def check_sequences(values: np.ndarray, envs_allowed, first_valid: int, last_valid: int):
    """Every row is one env, consecutive in time, all within the held window."""
    env, time = values // 1000, values % 1000
    assert (env == env[:, :1]).all(), 'a sequence mixes envs'
    assert (np.diff(time, axis=1) == 1).all(), 'a sequence is not consecutive'
    assert np.isin(env[:, 0], envs_allowed).all()
    assert time.min() >= first_valid and time.max() <= last_valid
    return env[:, 0], time[:, 0]


def test_init_add_sample_shapes():
    state = replay.init(SPEC, num_envs=4, capacity=40, num_shards=2)
    assert state.data['obs'].shape == (2, 2, 10, 3)
    assert state.data['is_first'].dtype == jnp.bool_
    state = replay.add(state, make_step(0, 4))
    assert int(state.position) == 1
    batch = replay.sample(state, jax.random.key(0), batch_size=6, length=1)
    assert batch['obs'].shape == (6, 1, 3) and batch['obs'].dtype == jnp.float32
    assert batch['value'].shape == (6, 1) and batch['is_first'].shape == (6, 1)


def test_sampled_sequences_match_written_steps():
    num_envs, steps, length = 4, 8, 3
    state = filled(num_envs, capacity=40, steps=steps, num_shards=2)
    batch = jitted_sample(state, jax.random.key(1), batch_size=400, length=length)
    values = np.asarray(batch['value'])
    env, start = check_sequences(values, range(num_envs), 0, steps - 1)
    # Shard s (rows s*200 .. s*200+199) only holds envs 2s and 2s+1.
    assert set(env[:200]) == {0, 1} and set(env[200:]) == {2, 3}
    assert set(start) == set(range(steps - length + 1)), 'not every valid start was drawn'
    np.testing.assert_array_equal(np.asarray(batch['obs'])[..., 0], values % 1000)
    np.testing.assert_array_equal(np.asarray(batch['is_first']), values % 1000 == 0)


def test_wrap_around_never_returns_overwritten_steps():
    num_envs, capacity_per_env, steps, length = 2, 10, 23, 4
    state = filled(num_envs, capacity=num_envs * capacity_per_env, steps=steps)
    assert int(replay.size(state)) == num_envs * capacity_per_env
    batch = jitted_sample(state, jax.random.key(2), batch_size=500, length=length)
    _, start = check_sequences(np.asarray(batch['value']), range(num_envs),
                               steps - capacity_per_env, steps - 1)
    # Valid starts are 13..19; starts 17..19 cross the ring's end (time 20 is at index 0).
    assert set(start) == set(range(steps - capacity_per_env, steps - length + 1))


def test_can_sample_and_size():
    state = replay.init(SPEC, num_envs=2, capacity=20)
    assert not bool(replay.can_sample(state, 1)) and int(replay.size(state)) == 0
    for time in range(3):
        state = replay.add(state, make_step(time, 2))
    assert not bool(replay.can_sample(state, 4))
    assert bool(replay.can_sample(state, 3))
    assert int(replay.size(state)) == 6


def test_recency_favours_new_starts_and_stays_valid():
    state = filled(num_envs=2, capacity=200, steps=150)
    starts = {}
    for recency in (0.0, 4.0):
        batch = jitted_sample(state, jax.random.key(3), batch_size=2000, length=5,
                              recency=recency)
        _, starts[recency] = check_sequences(np.asarray(batch['value']), range(2), 50, 149)
    assert starts[4.0].mean() > starts[0.0].mean() + 10
    newest, oldest = (starts[4.0] >= 140).mean(), (starts[4.0] < 60).mean()
    assert newest > 10 * oldest


@pytest.mark.parametrize('arguments, message', [
    (dict(num_envs=6, capacity=60, num_shards=4), 'not divisible by num_shards'),
    (dict(num_envs=8, capacity=7), 'smaller than num_envs'),
    (dict(num_envs=0, capacity=7), 'num_envs >= 1'),
])
def test_init_validation(arguments, message):
    with pytest.raises(ValueError, match=message):
        replay.init(SPEC, **arguments)


def test_add_and_sample_validation():
    state = replay.init(SPEC, num_envs=4, capacity=40, num_shards=2)
    with pytest.raises(ValueError, match='fields'):
        replay.add(state, {'value': np.zeros(4, np.int32)})
    with pytest.raises(ValueError, match='shape'):
        replay.add(state, {**make_step(0, 4), 'obs': np.zeros((4, 2))})
    with pytest.raises(ValueError, match='multiple of 2'):
        replay.sample(state, jax.random.key(0), batch_size=3, length=2)
    with pytest.raises(ValueError, match='length=11'):
        replay.sample(state, jax.random.key(0), batch_size=2, length=11)


def test_jit_compiles_once():
    traces = {'add': 0, 'sample': 0}

    def add(state, step):
        traces['add'] += 1
        return replay.add(state, step)

    def sample(state, key):
        traces['sample'] += 1
        return replay.sample(state, key, batch_size=4, length=3)

    add, sample = jax.jit(add, donate_argnums=0), jax.jit(sample)
    state = replay.init(SPEC, num_envs=2, capacity=16)
    key = jax.random.key(0)
    for time in range(12):  # crosses the wrap-around
        state = add(state, make_step(time, 2))
        if time >= 2:
            key, sample_key = jax.random.split(key)
            check_sequences(np.asarray(sample(state, sample_key)['value']), range(2), 0, time)
    assert traces == {'add': 1, 'sample': 1}


def test_memory_bytes():
    # 250 steps per env * 4 envs * (4 + 12 + 1) bytes, plus the int32 position.
    assert replay.memory_bytes(SPEC, num_envs=4, capacity=1001) == 1000 * 17 + 4


def test_sharded_matches_unsharded_on_eight_devices(run_with_devices):
    output = run_with_devices('''
        import re
        import jax, jax.numpy as jnp, numpy as np
        from dreamerjax.data import replay
        assert jax.device_count() == 8
        mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
        spec = {'value': ((), jnp.int32), 'obs': ((2,), jnp.float32)}
        num_envs, steps = 16, 13
        plain = replay.init(spec, num_envs, num_envs * 10, num_shards=8)
        sharded = replay.init(spec, num_envs, num_envs * 10, num_shards=8, mesh=mesh)
        shardings = replay.shardings(mesh, jax.eval_shape(lambda: sharded))
        assert sharded.data['value'].sharding.spec == jax.sharding.PartitionSpec('data')
        add = jax.jit(replay.add)
        add_sharded = jax.jit(replay.add, in_shardings=(shardings, None),
                              out_shardings=shardings, donate_argnums=0)
        for time in range(steps):
            step = {'value': 1000 * jnp.arange(num_envs) + time,
                    'obs': jnp.full((num_envs, 2), time, jnp.float32)}
            plain, sharded = add(plain, step), add_sharded(sharded, step)
        assert sharded.data['value'].sharding.spec == jax.sharding.PartitionSpec('data')
        sample = jax.jit(replay.sample, static_argnums=(2, 3))
        key = jax.random.key(7)
        expected = sample(plain, key, 32, 4)
        got = sample(sharded, key, 32, 4)
        for name in spec:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))
        values = np.asarray(got['value'])
        env, time = values // 1000, values % 1000
        assert (np.diff(time, axis=1) == 1).all() and (env == env[:, :1]).all()
        # 4 rows per shard; shard s holds envs 2s and 2s+1.
        assert (env[:, 0] // 2 == np.repeat(np.arange(8), 4)).all(), env[:, 0]
        assert time.max() <= steps - 1 and time.min() >= steps - 10
        compiled = sample.lower(sharded, key, 32, 4).compile().as_text()
        collectives = re.findall(r'all-gather|all-to-all|all-reduce|collective-permute', compiled)
        print('collectives', sorted(set(collectives)))
        print('output', got['value'].sharding.spec)
        print('ok')
    ''')
    assert 'ok' in output
    assert 'collectives []' in output, output  # sampling stays local to each device
