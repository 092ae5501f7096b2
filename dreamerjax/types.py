"""Pytrees passed between the parts of the framework.

A batch is a dict of arrays `[B, T, ...]`: the observation keys (`image` uint8 `[B,T,H,W,C]`,
`vector` float32 `[B,T,D]`), `action` float32 `[B,T,A]` (one-hot for discrete actions; the action
that led *into* this step, zero on `is_first`), `reward` `[B,T]` (received on arriving at this
step), `is_first`, `is_last`, `is_terminal` bool `[B,T]`.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Params = Any


@flax.struct.dataclass
class ReturnNorm:
  """EMA of the 5th and 95th return percentiles (DreamerV3 return normalization)."""

  low: jax.Array
  high: jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything carried from one `train_step` to the next, and checkpointed whole."""

  params: dict[str, Params]          # {'world_model', 'actor', 'critic'}
  opt_state: dict[str, Any]          # optax states with the same keys
  slow_critic: Params                # EMA of the critic parameters
  return_norm: ReturnNorm
  step: jax.Array                    # int32 number of train steps taken
  rng: jax.Array                     # PRNG key
