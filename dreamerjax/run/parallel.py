"""Devices, shardings and host<->device transfers: one code path from 1 device to a TPU pod, and
many independent seeds in one program.

Mesh. One axis, `data`, over every device of every process, ordered by process so that each
process owns one contiguous block. Batches, envs, policy carries and replay shards are split over
it; parameters and optimizer state are replicated, unless a rule of `config.parallel.param_rules`
shards them (FSDP style). `jax.jit` with these shardings lets XLA insert the gradient all-reduce
(and, for sharded parameters, the all-gathers), so one device, 8 simulated CPU devices and a pod
run the same program.

Seeds. `config.num_seeds = K > 1` trains K independent agents as a vmapped leading axis of every
array of the run (TrainState, ReplayState, env steps, carries, metrics); that axis is *not* split
over devices. Why a vmapped axis replicated over `data` rather than a `seed` mesh axis:
  * any K works with any number of devices and hosts (no K | devices coupling), and every device
    does the same work either way: K seeds x its B / D share of each batch;
  * multi-host feeding is unchanged: each process steps its share of the envs of every seed, so no
    seed is tied to a host;
  * the cost is K copies of the parameters on every device and a K-times larger gradient
    all-reduce. Dreamer models are small next to their activations (12m parameters = 48 MB f32
    per seed), and FSDP rules can shard large parameters over `data` when that matters.
A `seed` mesh axis (2-D mesh, state sharded over `seed`) would cut that memory and traffic by its
size; it is the extension to make when K copies of a large model do not fit.

Transfers. Host data enters only through `Layout.put` (explicit `jax.device_put`, or
`jax.make_array_from_process_local_data` with several processes) and leaves only through
`to_host` (explicit `jax.device_get` of the process-local shards), so the hot loop runs under
`jax.transfer_guard('disallow')` (see `config.run.transfer_guard`).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = 'data'
AXES = (DATA,)


# ------------------------------------------------------------------------------- processes

def _on_tpu_host() -> bool:
  """A Cloud TPU VM: libtpu installed and TPU device files present (checked without starting a
  JAX backend, which must not exist before `jax.distributed.initialize`)."""
  has_libtpu = importlib.util.find_spec('libtpu') is not None
  return has_libtpu and bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process JAX job; call before anything touches a JAX device.

  With a coordinator address (argument or `JAX_COORDINATOR_ADDRESS`), every process passes the
  same address and process count (`JAX_NUM_PROCESSES`) and its own id (`JAX_PROCESS_ID`).
  Without one, on a Cloud TPU VM, JAX finds the pod's processes itself; elsewhere nothing happens
  (one process). CPU processes talk through gloo collectives.

  Returns:
    True when `jax.distributed.initialize` was called.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id as well')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, {num_processes})')
    # Only the CPU client reads this; without it CPU processes cannot run collectives.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif num_processes not in (None, 1) or process_id not in (None, 0):
    raise ValueError('--num_processes/--process_id need --coordinator_address')
  elif _on_tpu_host():
    jax.distributed.initialize()
  else:
    return False
  logging.info('Process %d of %d; %d local devices of %d.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, metrics, config.json and plots."""
  return jax.process_index() == 0


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (0: all of them), ordered by process
  so each process holds one contiguous block of the axis."""
  available = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  count = num_devices or len(available)
  if count > len(available):
    raise ValueError(f'--config.parallel.devices={count} but only {len(available)} devices are '
                     'visible; lower it or use 0 for all')
  if jax.process_count() > 1 and count != len(available):
    raise ValueError(f'--config.parallel.devices={count}: a run over {jax.process_count()} '
                     f'processes uses all {len(available)} devices; pass 0')
  return Mesh(np.array(available[:count]), AXES, axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`."""
  return NamedSharding(mesh, PartitionSpec(DATA))


# ------------------------------------------------------------------------------- layout

@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the arrays of one run live: a mesh, and the number of vmapped seeds `K`.

  Per-seed shapes get a leading `[K]` axis when `num_seeds > 1` (and none for one seed, so a
  single-seed run is exactly the plain program). `N` below is the number of envs per seed over all
  processes; `n = N / processes` of them are stepped by this process.
  """

  mesh: Mesh
  num_seeds: int = 1

  @property
  def stacked(self) -> bool:
    return self.num_seeds > 1

  def sharding(self, *spec) -> NamedSharding:
    """Sharding of a per-seed array with partition `spec`, behind the unsplit seed axis."""
    return NamedSharding(self.mesh, PartitionSpec(*((None,) if self.stacked else ()), *spec))

  @property
  def replicated(self) -> NamedSharding:
    """Per-seed values held whole on every device: states, keys, metrics."""
    return self.sharding()

  @property
  def per_env(self) -> NamedSharding:
    """`[K?, N, ...]` (env steps, carries, actions) and `[K?, B, T, ...]` (batches): split over
    `data`."""
    return self.sharding(DATA)

  def with_seed_axis(self, shardings: Any) -> Any:
    """Shardings of per-seed arrays (e.g. `replay.shardings`) -> shardings of the stacked ones."""
    if not self.stacked:
      return shardings
    return jax.tree.map(lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), shardings)

  def over_seeds(self, fn: Callable, in_axes: Any = 0) -> Callable:
    """`fn` on one seed's arrays -> `fn` on the stacked arrays (vmap), or `fn` for one seed."""
    return jax.vmap(fn, in_axes=in_axes) if self.stacked else fn

  def broadcast(self, tree: Any) -> Any:
    """The same per-seed value for every seed: `[...]` -> `[K, ...]` (use inside jit)."""
    if not self.stacked:
      return tree
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_seeds, *x.shape)), tree)

  def seed_keys(self, seed: int) -> jax.Array:
    """`jax.random.key(seed + k)` for each seed `k` (stacked `[K]`), or `key(seed)`."""
    if not self.stacked:
      return jax.random.key(seed)
    return jnp.stack([jax.random.key(seed + k) for k in range(self.num_seeds)])

  def put(self, tree: Any, sharding: NamedSharding | None = None) -> Any:
    """Host arrays -> global device arrays, explicitly (allowed under a transfer guard).

    Args:
      tree: numpy arrays. For a sharding split over `data` (default `per_env`), this process's
        part: `[K?, n, ...]`; for a replicated sharding, the whole value (same on all processes).
      sharding: target sharding of every leaf.
    Returns:
      jax Arrays with the global shapes (`[K?, N, ...]` for `per_env`).
    """
    sharding = self.per_env if sharding is None else sharding
    if jax.process_count() == 1:
      return jax.device_put(tree, sharding)
    local_devices = {d for d in self.mesh.devices.flat if d.process_index == jax.process_index()}
    factor = self.mesh.devices.size // len(local_devices)

    def put_leaf(x):
      x = np.asarray(x)
      shape = list(x.shape)
      for dim, axes in enumerate(sharding.spec):
        if axes == DATA or (isinstance(axes, tuple) and DATA in axes):
          shape[dim] *= factor
      return jax.make_array_from_process_local_data(sharding, x, tuple(shape))
    return jax.tree.map(put_leaf, tree)


def to_host(tree: Any) -> Any:
  """Global device arrays -> numpy: the part held by this process's devices (all of it for
  replicated arrays or one process), with one explicit `jax.device_get`."""
  leaves, treedef = jax.tree.flatten(tree)
  pieces = []  # per leaf: [(bounds per dimension, or None for the whole array, device array)]
  for x in leaves:
    if x.is_fully_addressable:
      pieces.append([(None, x)])
      continue
    unique = {}
    for shard in x.addressable_shards:
      bounds = tuple(index.indices(size)[:2]
                     for index, size in zip(shard.index, x.shape, strict=True))
      unique.setdefault(bounds, shard.data)
    pieces.append(list(unique.items()))
  fetched = jax.device_get([[data for _, data in parts] for parts in pieces])
  out = []
  for parts, values in zip(pieces, fetched, strict=True):
    if parts[0][0] is None:
      out.append(np.asarray(values[0]))
      continue
    rank = len(parts[0][0])
    low = [min(bounds[d][0] for bounds, _ in parts) for d in range(rank)]
    high = [max(bounds[d][1] for bounds, _ in parts) for d in range(rank)]
    local = np.empty([h - lo for lo, h in zip(low, high, strict=True)], values[0].dtype)
    for (bounds, _), value in zip(parts, values, strict=True):
      local[tuple(slice(b - lo, e - lo) for (b, e), lo in zip(bounds, low, strict=True))] = value
    out.append(local)
  return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------------------------- parameters

def path_name(path: Sequence[Any]) -> str:
  """`params/world_model/dynamics/.../kernel`: a tree path as the string rules match against."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator='/')


def check_rules(rules: Sequence[tuple[str, tuple]]) -> list[str]:
  """Problems with `config.parallel.param_rules` (empty when they are well formed)."""
  problems = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      problems.append(f'--config.parallel.param_rules entry {rule!r} must be (regex, spec tuple)')
      continue
    pattern, spec = rule
    try:
      re.compile(pattern)
    except (re.error, TypeError) as error:
      problems.append(f'--config.parallel.param_rules regex {pattern!r} does not compile: '
                      f'{error}')
    if not isinstance(spec, (tuple, list)):
      problems.append(f'--config.parallel.param_rules spec {spec!r} must be a tuple like '
                      f'("{DATA}", None)')
      continue
    for axes in spec:
      names = axes if isinstance(axes, (tuple, list)) else (axes,)
      unknown = [name for name in names if name is not None and name not in AXES]
      if unknown:
        problems.append(f'--config.parallel.param_rules spec {spec!r} names mesh axes '
                        f'{unknown}; the mesh has {AXES}')
  return problems


def state_shardings(layout: Layout, abstract_state: Any,
                    rules: Sequence[tuple[str, tuple]] = ()) -> Any:
  """Shardings of a TrainState: the first rule whose regex `re.search`es a leaf's path wins;
  leaves no rule matches are replicated.

  Paths look like `params/world_model/dynamics/params/Dense_0/kernel`; Adam moments live at
  `opt_state/world_model/1/0/mu/...` with the same suffix, so a pattern that is not anchored to
  `params/` shards them alike (what FSDP wants). A spec names one mesh axis (or None) per leading
  dimension of the per-seed leaf, e.g. `('kernel$', ('data', None))` splits the rows of matching
  kernels over `data`.

  Args:
    layout: mesh and seeds; with several seeds, the leading seed axis is not split.
    abstract_state: the state's shapes, e.g. `jax.eval_shape(init, key)`.
    rules: (regex, spec tuple) pairs.
  Raises:
    ValueError: a rule does not fit a leaf it matches (rank or divisibility).
  """
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
  lead = 1 if layout.stacked else 0

  def leaf_sharding(path, leaf):
    name = path_name(path)
    for pattern, spec in compiled:
      if not pattern.search(name):
        continue
      shape = tuple(leaf.shape[lead:])
      if len(spec) > len(shape):
        raise ValueError(f'param rule {pattern.pattern!r} -> {spec} has more entries than '
                         f'{name} has dimensions {shape}; make the regex more specific')
      for dim, axes in enumerate(spec):
        names = axes if isinstance(axes, (tuple, list)) else (axes,)
        parts = int(np.prod([layout.mesh.shape[a] for a in names if a is not None]))
        if shape[dim] % parts:
          raise ValueError(f'param rule {pattern.pattern!r} -> {spec} splits dimension {dim} '
                           f'of {name} {shape} into {parts} parts, which does not divide it; '
                           'make the regex more specific or change the spec')
      return layout.sharding(*spec)
    return layout.replicated

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


# ------------------------------------------------------------------------------- processes agree

def _allgather(values: np.ndarray) -> np.ndarray:
  """`[P, ...]`: `values` (same shape on every process) from every process, in process order."""
  return np.asarray(multihost_utils.process_allgather(values))


def agree(stop: bool, save: bool) -> tuple[bool, bool]:
  """Decisions every process must take together: stop if any process was signalled; save when
  process 0's timer says so (timers differ between hosts)."""
  if jax.process_count() == 1:
    return stop, save
  flags = _allgather(np.array([stop, save], np.int32))
  return bool(flags[:, 0].any()), bool(flags[0, 1])


def main_process_says(flag: bool) -> bool:
  """Process 0's `flag`, on every process (what process 0 found, e.g. that it took a lock)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(_allgather(np.array([flag], np.int32))[0, 0])


def gather_rows(rows: np.ndarray) -> np.ndarray:
  """Concatenates float64 rows `[n_p, F]` of every process (n_p may differ), in process order."""
  if jax.process_count() == 1:
    return rows
  rows = np.asarray(rows, np.float64)
  counts = _allgather(np.array([len(rows)], np.int32))[:, 0]
  padded = np.zeros((int(counts.max()), rows.shape[1]), np.float64)
  padded[:len(rows)] = rows
  # Sent as uint32 pairs: the collectives run without x64, and steps need all their bits.
  gathered = _allgather(padded.view(np.uint32)).view(np.float64)
  return np.concatenate([gathered[p, :count] for p, count in enumerate(counts)])


def barrier(name: str) -> None:
  """Waits until every process got here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def checksum(tree: Any) -> float:
  """Sum of every value of this process's part of `tree`, in float64: a cheap fingerprint to
  check that processes (or runs) hold the same replicated parameters."""
  return float(sum(np.sum(np.asarray(x, np.float64)) for x in jax.tree.leaves(to_host(tree))))
