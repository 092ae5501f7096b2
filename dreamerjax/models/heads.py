"""Scalar prediction heads: twohot over symexp bins (DreamerV3) or plain MSE (DreamerV1/V2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamerjax.models import ops


def scalar_outputs(kind: str, bins: int) -> int:
  return bins if kind == 'twohot' else 1


def scalar_predict(kind: str, outputs: jax.Array, bins: jax.Array) -> jax.Array:
  """Point prediction `[...]` from head outputs `[..., K]`."""
  return ops.twohot_mean(outputs, bins) if kind == 'twohot' else outputs[..., 0]


def scalar_loss(kind: str, outputs: jax.Array, target: jax.Array, bins: jax.Array) -> jax.Array:
  """Per-element loss `[...]`: twohot cross-entropy, or the unit-variance Gaussian NLL (MSE / 2)."""
  target = jax.lax.stop_gradient(target.astype(jnp.float32))
  if kind == 'twohot':
    return ops.twohot_loss(outputs, target, bins)
  return 0.5 * jnp.square(outputs[..., 0] - target)
