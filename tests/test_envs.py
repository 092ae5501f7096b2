"""Tests for dreamerjax.data.envs (envpool adapters in the Dreamer step convention)."""

import ctypes
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dreamerjax.data import envs

STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal")


def _check_step(out, env):
    n = env.num_envs
    assert set(out) == set(env.obs_space) | set(STEP_KEYS)
    for key, (shape, dtype) in env.obs_space.items():
        assert out[key].shape == (n, *shape), key
        assert out[key].dtype == dtype, key
    assert out["reward"].shape == (n,) and out["reward"].dtype == np.float32
    for key in ("is_first", "is_last", "is_terminal"):
        assert out[key].shape == (n,) and out[key].dtype == bool, key


def _random_actions(env, rng):
    space = env.act_space
    if space.discrete:
        return rng.integers(0, space.num_actions, env.num_envs, dtype=np.int32)
    return rng.uniform(-1, 1, (env.num_envs, *space.shape)).astype(np.float32)


def test_cartpole_episode_boundaries():
    env = envs.make_env("CartPole-v1", 4, seed=0)
    assert env.obs_space == {"vector": ((4,), np.dtype(np.float32))}
    assert env.act_space.discrete and env.act_space.shape == () and env.act_space.num_actions == 2
    out = env.reset()
    _check_step(out, env)
    assert out["is_first"].all() and not out["is_last"].any() and not out["is_terminal"].any()
    assert (out["reward"] == 0).all()

    rng = np.random.default_rng(0)
    returns, lengths = np.zeros(4), np.zeros(4, int)
    prev_last = np.zeros(4, bool)
    checked_restart = 0
    for _ in range(500):
        out = env.step(_random_actions(env, rng))
        _check_step(out, env)
        # The step after is_last (and only that one) starts a new episode, with reward 0.
        np.testing.assert_array_equal(out["is_first"], prev_last)
        assert (out["reward"][out["is_first"]] == 0).all()
        assert (out["reward"][~out["is_first"]] == 1).all()
        assert not (out["is_first"] & out["is_last"]).any()
        checked_restart += int(prev_last.sum())
        returns[out["is_first"]] = 0
        lengths[out["is_first"]] = 0
        returns += out["reward"]
        lengths += ~out["is_first"]
        finished = env.pop_finished_episodes()
        assert sorted(i for i, _, _ in finished) == list(np.flatnonzero(out["is_last"]))
        for i, ret, length in finished:
            assert ret == returns[i] == length == lengths[i]  # CartPole: +1 per step
            assert out["is_terminal"][i]  # random play falls over long before the time limit
        assert env.pop_finished_episodes() == []  # cleared when read
        prev_last = out["is_last"]
        if checked_restart >= 2:
            break
    assert checked_restart >= 2
    env.close()


def test_time_limit_is_last_not_terminal():
    env = envs.make_env("Pendulum-v1", 2, seed=0, max_episode_steps=5)
    env.reset()
    rng = np.random.default_rng(0)
    outs = [env.step(_random_actions(env, rng)) for _ in range(6)]
    assert [o["is_last"].all() for o in outs] == [False] * 4 + [True, False]
    assert not any(o["is_terminal"].any() for o in outs)
    assert outs[5]["is_first"].all() and (outs[5]["reward"] == 0).all()
    finished = env.pop_finished_episodes()
    assert [(i, n) for i, _, n in finished] == [(0, 5), (1, 5)]
    for i, ret, _ in finished:
        assert ret == pytest.approx(sum(float(o["reward"][i]) for o in outs[:5]), rel=1e-5)
    env.close()


def test_same_seed_same_observations():
    a, b = envs.make_env("CartPole-v1", 3, seed=7), envs.make_env("CartPole-v1", 3, seed=7)
    np.testing.assert_array_equal(a.reset()["vector"], b.reset()["vector"])
    a.close()
    b.close()


def test_pong_image_observations():
    env = envs.make_env("Pong-v5", 2, seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.dtype(np.uint8))}
    assert env.act_space.discrete and env.act_space.num_actions == 6
    assert env.act_space.low is None and env.act_space.high is None
    out = env.reset()
    _check_step(out, env)
    assert out["image"].flags.c_contiguous and out["image"].max() > 0
    out = env.step(np.array([0, 5], np.int32))
    _check_step(out, env)
    with pytest.raises(ValueError, match="in \\[0, 6\\)"):
        env.step(np.array([0, 6], np.int32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.int32))
    env.close()


def test_atari_options_and_size():
    env = envs.make_env("Breakout-v5", 1, seed=0, size=(32, 48), sticky=True, noop_max=0)
    assert env.obs_space["image"] == ((32, 48, 3), np.dtype(np.uint8))
    assert env.reset()["image"].shape == (1, 32, 48, 3)
    env.step(np.zeros(1, np.int32))
    env.close()


def test_dmc_proprio():
    env = envs.make_env("CartpoleBalance-v1", 2, seed=0, max_episode_steps=3)
    # position (3) + velocity (2), flattened in sorted key order.
    assert env.obs_space == {"vector": ((5,), np.dtype(np.float32))}
    space = env.act_space
    assert not space.discrete and space.shape == (1,) and space.num_actions == 1
    np.testing.assert_array_equal(space.low, [-1.0])
    np.testing.assert_array_equal(space.high, [1.0])
    assert space.low.dtype == np.float32
    np.testing.assert_array_equal(env.native_action_low, [-1.0])
    np.testing.assert_array_equal(env.native_action_high, [1.0])
    _check_step(env.reset(), env)
    rng = np.random.default_rng(0)
    outs = [env.step(_random_actions(env, rng)) for _ in range(4)]
    for out in outs:
        _check_step(out, env)
    assert outs[2]["is_last"].all() and not outs[2]["is_terminal"].any()
    assert (outs[2]["reward"] > 0).all()
    # envpool repeats the last reward on the DMC auto-reset step; the adapter zeroes it.
    assert outs[3]["is_first"].all() and (outs[3]["reward"] == 0).all()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2,), np.float32))
    env.close()


def test_pendulum_action_scaling():
    env = envs.make_env("Pendulum-v1", 5, seed=0)
    assert env.act_space.shape == (1,) and not env.act_space.discrete
    np.testing.assert_array_equal(env.native_action_low, [-2.0])
    np.testing.assert_array_equal(env.native_action_high, [2.0])
    action = np.array([[-1.0], [-0.5], [0.0], [0.25], [3.0]], np.float32)
    expected_torque = np.array([-2.0, -1.0, 0.0, 0.5, 2.0])  # 3.0 is clipped to 1
    np.testing.assert_allclose(env._convert_action(action)[:, 0], expected_torque)
    # End to end: recover the applied torque from the Pendulum-v1 dynamics
    # thdot' = thdot + (3 g / (2 l) sin(th) + 3 / (m l^2) u) dt, g=10, l=m=1, dt=0.05.
    obs = env.reset()["vector"].astype(np.float64)
    new = env.step(action)["vector"].astype(np.float64)
    torque = ((new[:, 2] - obs[:, 2]) / 0.05 - 15.0 * obs[:, 1]) / 3.0
    np.testing.assert_allclose(torque, expected_torque, atol=1e-3)
    env.close()


def test_unknown_task_suggests_close_names():
    with pytest.raises(ValueError, match="CartPole-v1") as info:
        envs.make_env("CartPol-v1", 1, seed=0)
    assert "known_tasks()" in str(info.value)
    with pytest.raises(ValueError, match="not supported"):
        envs.make_env("Ant-v4", 1, seed=0)  # a real envpool id, unsupported family
    tasks = envs.known_tasks()
    for task in (
        "Pong-v5",
        "CartpoleBalance-v1",
        "CheetahRun-v1",
        "CartPole-v1",
        "Acrobot-v1",
        "Pendulum-v1",
        "MountainCar-v0",
        "MountainCarContinuous-v0",
    ):
        assert task in tasks
    assert "Ant-v4" not in tasks and all("/" not in t for t in tasks)


@pytest.mark.parametrize(
    "task, kwargs, match",
    [
        ("CartPole-v1", {"num_envs": 0}, "num_envs"),
        ("CartPole-v1", {"sticky": True}, "sticky=False"),
        ("CheetahRun-v1", {"sticky": True}, "sticky=False"),
        ("CartPole-v1", {"from_pixels": True}, "from_pixels=False"),
        ("Pong-v5", {"from_pixels": True}, "from_pixels=False"),
        ("Pong-v5", {"noop_max": -1}, "noop_max"),
        ("CartPole-v1", {"max_episode_steps": 0}, "max_episode_steps"),
        ("Pong-v5", {"size": (64,)}, "size"),
    ],
)
def test_bad_arguments(task, kwargs, match):
    kwargs = {"num_envs": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        envs.make_env(task, **kwargs)


def test_step_before_reset_raises():
    env = envs.make_env("CartPole-v1", 1, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.int32))
    env.close()


def test_benchmark_env():
    assert envs.benchmark_env("CartPole-v1", 2, 50) > 0


def _gl_library_present():
    for lib in ("libEGL.so.1", "libOSMesa.so.8"):
        try:
            ctypes.CDLL(lib)  # RTLD_LOCAL: only checks presence
            return True
        except OSError:
            pass
    return False


def _run_python(code):
    # A fresh process: GL must be preloaded before envpool is first imported, and a failed
    # MuJoCo render kills the whole process.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(
    not _gl_library_present(), reason="no libEGL.so.1 / libOSMesa.so.8 (apt-get install libegl1)"
)
def test_dmc_pixels_subprocess():
    proc = _run_python("""
        import numpy as np
        from dreamerjax.data import envs
        env = envs.make_env('CartpoleBalance-v1', 2, seed=0, from_pixels=True, size=(64, 64))
        assert env.obs_space == {'image': ((64, 64, 3), np.dtype(np.uint8))}, env.obs_space
        out = env.reset()
        assert out['image'].shape == (2, 64, 64, 3) and out['image'].dtype == np.uint8
        out = env.step(np.zeros((2, 1), np.float32))
        assert out['image'].shape == (2, 64, 64, 3)
        assert 10 < out['image'].mean() < 245, out['image'].mean()
        env.close()
        print('PIXELS_OK')
    """)
    assert "PIXELS_OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(
    not _gl_library_present(), reason="no libEGL.so.1 / libOSMesa.so.8 (apt-get install libegl1)"
)
def test_dmc_pixels_after_foreign_envpool_import_raises():
    proc = _run_python("""
        import envpool  # imported before any GL library: rendering would kill the process
        from dreamerjax.data import envs
        try:
            envs.make_env('CartpoleBalance-v1', 1, seed=0, from_pixels=True)
        except RuntimeError as exc:
            print('RAISED', exc)
    """)
    assert "RAISED" in proc.stdout and "preload_gl" in proc.stdout, proc.stdout + proc.stderr
