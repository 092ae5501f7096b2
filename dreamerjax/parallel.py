"""Device meshes and shardings: one code path for 1 device, N devices of one host, and pods.

The mesh has one axis, `data`: batches, envs and replay shards are split over it, parameters are
replicated. `jax.jit` with explicit shardings lets XLA insert the gradient all-reduce.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = 'data'


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (0: all of them)."""
  available = jax.devices()
  count = num_devices or len(available)
  if count > len(available):
    raise ValueError(f'--config.parallel.devices={count} but only {len(available)} devices are '
                     'visible; lower it or use 0 for all')
  return Mesh(np.array(available[:count]), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`."""
  return NamedSharding(mesh, PartitionSpec(DATA))
