"""Device-resident replay: a ring buffer of env steps as pure functions over a dataclass.

Layout: every field is stored as ``[S, E, C, ...]``: ``S`` shards (one per device on the
``data`` mesh axis), ``E`` envs per shard, ``C`` steps of capacity per env. Env ``i`` (in the
global env order used by `add`) lives in shard ``i // E`` at row ``i % E``. All envs are written
together, so one scalar ``position`` (steps written per env) describes the whole buffer.

`init`, `add` and `sample` are pure and can run inside `jax.jit`; with the shard axis sharded
over devices (see `shardings`), writes and sampling stay local to each device.

    replay = init({'obs': ((4,), jnp.float32), 'is_first': ((), jnp.bool_)}, num_envs=8,
                  capacity=10_000)
    replay = add(replay, {'obs': obs, 'is_first': is_first})  # each [num_envs, ...]
    batch = sample(replay, key, batch_size=16, length=64)      # each [16, 64, ...]
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Spec = dict[str, tuple[tuple[int, ...], Any]]


@flax.struct.dataclass
class ReplayState:
    """The whole replay buffer.

    Attributes:
        data: field name -> array ``[S, E, C, ...]``.
        position: int32 scalar, total steps written per env; the next write goes to index
            ``position % C``.
    """

    data: dict[str, jax.Array]
    position: jax.Array

    @property
    def num_shards(self) -> int:
        return next(iter(self.data.values())).shape[0]

    @property
    def envs_per_shard(self) -> int:
        return next(iter(self.data.values())).shape[1]

    @property
    def capacity_per_env(self) -> int:
        return next(iter(self.data.values())).shape[2]


def _check_layout(spec: Spec, num_envs: int, capacity: int, num_shards: int = 1) -> int:
    """Validates the arguments of `init`; returns the per-env capacity ``C``."""
    if not spec:
        raise ValueError('replay spec is empty: pass at least one field, e.g. {"obs": ((4,), '
                         'jnp.float32)}.')
    if num_envs < 1 or num_shards < 1:
        raise ValueError(f'replay needs num_envs >= 1 and num_shards >= 1, got num_envs='
                         f'{num_envs}, num_shards={num_shards}.')
    if num_envs % num_shards:
        raise ValueError(f'num_envs={num_envs} is not divisible by num_shards={num_shards} '
                         f'(the number of devices on the data axis): change the number of envs '
                         f'to a multiple of {num_shards}.')
    capacity_per_env = capacity // num_envs
    if capacity_per_env < 1:
        raise ValueError(f'replay capacity={capacity} is smaller than num_envs={num_envs}, so '
                         f'each env would hold 0 steps: raise the capacity to at least '
                         f'{num_envs} (capacity counts env steps over all envs).')
    return capacity_per_env


def init(spec: Spec, num_envs: int, capacity: int, num_shards: int = 1,
         mesh: Mesh | None = None) -> ReplayState:
    """Creates an empty (zero-filled) buffer.

    Args:
        spec: field name -> (per-step shape, dtype), e.g. ``{'image': ((64, 64, 3), jnp.uint8)}``.
        num_envs: envs written by every `add`.
        capacity: total env steps held over all envs; each env holds ``capacity // num_envs``.
        num_shards: ``S``, normally the size of the ``data`` mesh axis.
        mesh: if given, the buffer is created directly with `shardings` on this mesh, so a large
            buffer never has to fit on one device.
    Returns:
        A `ReplayState` with fields ``[S, num_envs // S, capacity // num_envs, ...]``.
    """
    capacity_per_env = _check_layout(spec, num_envs, capacity, num_shards)
    envs_per_shard = num_envs // num_shards

    def make() -> ReplayState:
        data = {
            name: jnp.zeros((num_shards, envs_per_shard, capacity_per_env, *shape), dtype)
            for name, (shape, dtype) in spec.items()
        }
        return ReplayState(data=data, position=jnp.zeros((), jnp.int32))

    if mesh is None:
        return make()
    return jax.jit(make, out_shardings=shardings(mesh, jax.eval_shape(make)))()


def add(state: ReplayState, step: dict[str, jax.Array]) -> ReplayState:
    """Writes one step of every env.

    Args:
        state: the buffer.
        step: field name -> ``[num_envs, ...]`` in global env order (the keys of the spec).
            Values are cast to the stored dtype.
    Returns:
        The buffer with the step written at ``position % C`` and ``position`` advanced by one.
    """
    if set(step) != set(state.data):
        raise ValueError(f'replay.add got fields {sorted(step)}, but the buffer stores '
                         f'{sorted(state.data)}.')
    index = state.position % state.capacity_per_env
    data = {}
    for name, buffer in state.data.items():
        shards, envs, _, *shape = buffer.shape
        value = jnp.asarray(step[name])
        if value.shape != (shards * envs, *shape):
            raise ValueError(f'replay.add field {name!r} has shape {value.shape}, expected '
                             f'{(shards * envs, *shape)} (num_envs first).')
        value = value.astype(buffer.dtype).reshape(shards, envs, 1, *shape)
        data[name] = jax.lax.dynamic_update_slice_in_dim(buffer, value, index, axis=2)
    return ReplayState(data=data, position=state.position + 1)


def size(state: ReplayState) -> jax.Array:
    """Env steps currently held over all envs: ``min(position, C) * num_envs``."""
    held = jnp.minimum(state.position, state.capacity_per_env)
    return held * (state.num_shards * state.envs_per_shard)


def can_sample(state: ReplayState, length: int) -> jax.Array:
    """Whether every env holds at least one whole sequence of ``length`` steps."""
    return (state.position >= length) & (length <= state.capacity_per_env)


def _sample_offsets(key: jax.Array, count: jax.Array, shape: tuple[int, ...],
                    recency: float) -> jax.Array:
    """Offsets in ``[0, count)`` from the oldest valid start; uniform or favouring new ones.

    With ``recency > 0`` the chance of a start falls geometrically with its age, so the newest
    start is ``exp(recency)`` times as likely as the oldest (inverse CDF of a truncated
    exponential, floored: exact for the discrete geometric distribution).
    """
    if recency == 0.0:
        return jax.random.randint(key, shape, 0, count)
    rate = recency / count.astype(jnp.float32)
    uniform = jax.random.uniform(key, shape)
    age = -jnp.log1p(-uniform * -jnp.expm1(-rate * count)) / rate
    age = jnp.clip(jnp.floor(age).astype(jnp.int32), 0, count - 1)
    return count - 1 - age


def sample(state: ReplayState, key: jax.Array, batch_size: int, length: int,
           recency: float = 0.0) -> dict[str, jax.Array]:
    """Samples ``batch_size`` contiguous sequences of ``length`` steps.

    Each shard draws ``batch_size // S`` sequences from its own envs (vmapped over the shard
    axis, so sampling stays on each device), uniformly over all start positions whose whole
    sequence is still held (wrap-around of the ring included). Sequences may cross episode
    boundaries; the data carries ``is_first``. Before `can_sample` is true the result is
    garbage (zeros or partly written steps); check it outside the jitted step.

    Args:
        state: the buffer.
        key: PRNG key.
        batch_size: ``B``, a multiple of ``S``.
        length: ``T``, at most ``C``.
        recency: 0 for uniform starts; > 0 makes the newest start ``exp(recency)`` times as
            likely as the oldest.
    Returns:
        field name -> ``[B, T, ...]``, the concatenation over shards in shard order.
    """
    shards, envs, capacity = state.num_shards, state.envs_per_shard, state.capacity_per_env
    if batch_size % shards:
        raise ValueError(f'batch_size={batch_size} is not divisible by the {shards} replay '
                         f'shards: use a multiple of {shards}.')
    if not 1 <= length <= capacity:
        raise ValueError(f'sequence length={length} must be in [1, {capacity}] (steps held per '
                         f'env): raise the replay capacity or shorten the sequences.')
    per_shard = batch_size // shards
    held = jnp.minimum(state.position, capacity)
    oldest = state.position - held  # time index of the oldest step still held
    count = jnp.maximum(held - length + 1, 1)  # valid starts per env

    def sample_shard(shard_data: dict[str, jax.Array], shard_key: jax.Array):
        env_key, offset_key = jax.random.split(shard_key)
        env = jax.random.randint(env_key, (per_shard,), 0, envs)
        start = oldest + _sample_offsets(offset_key, count, (per_shard,), recency)
        time = (start[:, None] + jnp.arange(length)[None, :]) % capacity  # [b, T]
        return {name: value[env[:, None], time] for name, value in shard_data.items()}

    keys = jax.random.split(key, shards)
    sequences = jax.vmap(sample_shard)(state.data, keys)  # each [S, b, T, ...]
    return {name: value.reshape(batch_size, length, *value.shape[3:])
            for name, value in sequences.items()}


def memory_bytes(spec: Spec, num_envs: int, capacity: int) -> int:
    """Bytes the buffer will occupy over all devices (for a memory estimate at start)."""
    held = (capacity // num_envs) * num_envs
    per_step = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
    return held * per_step + 4


def shardings(mesh: Mesh, state: ReplayState) -> ReplayState:
    """Shardings for a (possibly abstract) state: data split on ``'data'``, position replicated."""
    data_sharding = NamedSharding(mesh, PartitionSpec('data'))
    return ReplayState(
        data=jax.tree.map(lambda _: data_sharding, state.data),
        position=NamedSharding(mesh, PartitionSpec()),
    )
