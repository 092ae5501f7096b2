"""Pure math used across the Dreamer family: symlog transforms, twohot encoding, lambda returns.

Shapes use `B` (batch), `T` (time) and `K` (bins). Every function is jit- and vmap-safe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def symlog(x: jax.Array) -> jax.Array:
  """sign(x) * log(1 + |x|): compresses large magnitudes symmetrically (DreamerV3 eq. 1)."""
  return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
  """Inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
  return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def symexp_bins(num: int = 255, low: float = -20.0, high: float = 20.0) -> jax.Array:
  """Bin centres `symexp(linspace(low, high, num))`, dense near zero and sparse for large values."""
  # In float64 on the host, so the centre bin of an odd count is exactly zero.
  points = np.linspace(low, high, num, dtype=np.float64)
  return jnp.asarray(np.sign(points) * np.expm1(np.abs(points)), jnp.float32)


def twohot(x: jax.Array, bins: jax.Array) -> jax.Array:
  """Twohot target weights `[..., K]` for values `x` `[...]` over sorted `bins` `[K]`.

  The weight is split between the two bins that enclose x, in inverse proportion to the distance,
  so that `sum(weights * bins) == x` inside the bin range. Values outside the range put all weight
  on the nearest edge bin.
  """
  num = bins.shape[0]
  x = x.astype(jnp.float32)
  # Index of the last bin <= x, clipped so that `below + 1` exists.
  below = jnp.clip(jnp.sum((bins <= x[..., None]).astype(jnp.int32), -1) - 1, 0, num - 2)
  above = below + 1
  low, high = bins[below], bins[above]
  weight_above = jnp.clip((x - low) / (high - low), 0.0, 1.0)
  weight_below = 1.0 - weight_above
  return (jax.nn.one_hot(below, num) * weight_below[..., None]
          + jax.nn.one_hot(above, num) * weight_above[..., None])


def twohot_mean(logits: jax.Array, bins: jax.Array) -> jax.Array:
  """Expected value `sum(softmax(logits) * bins)` over the last axis `[..., K] -> [...]`.

  The bins are taken in pairs mirrored about the centre, `sum(p_r b_r + p_l b_l) =
  sum((p_r - p_l) b_r + p_l (b_l + b_r))`, with `p_r - p_l` computed from the logits as
  `p expm1(-|l_r - l_l|)`. For bins symmetric about zero (`symexp_bins`, whose outer bins are
  about +-5e8) the second term is zero and each pair contributes with float32 *relative* accuracy.
  A plain float32 sum leaves absolute errors of order 1 wherever the outer bins cancel (-0.66
  instead of 0 for uniform logits over 31 bins), different for every reduction order (one device
  versus eight).
  """
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, -1)
  count = bins.shape[-1]
  half = count // 2
  mirror = lambda x: (x[..., :half][..., ::-1], x[..., count - half:])  # noqa: E731
  (p_left, p_right), (b_left, b_right), (l_left, l_right) = (
      mirror(probs), mirror(bins), mirror(logits))
  gap = l_right - l_left
  right_larger = gap >= 0
  # p_r - p_l = -p_r expm1(-gap) if gap >= 0 else p_l expm1(gap); both arguments are <= 0.
  shrink = jnp.expm1(-jnp.where(right_larger, gap, 0.0)) * -p_right
  grow = jnp.expm1(jnp.where(right_larger, 0.0, gap)) * p_left
  difference = jnp.where(right_larger, shrink, grow)
  centre = jnp.sum(probs[..., half:count - half] * bins[..., half:count - half], -1)
  return centre + jnp.sum(difference * b_right + p_left * (b_left + b_right), -1)


def twohot_loss(logits: jax.Array, target: jax.Array, bins: jax.Array) -> jax.Array:
  """Cross-entropy of `logits` `[..., K]` against `twohot(target)`; returns `[...]`."""
  weights = jax.lax.stop_gradient(twohot(target, bins))
  return -jnp.sum(weights * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)


def lambda_returns(reward: jax.Array, cont: jax.Array, value: jax.Array,
                   lam: float | jax.Array) -> jax.Array:
  """TD(lambda) returns, computed backwards in time.

  `R_t = r_t + cont_t * ((1 - lam) * v_{t+1} + lam * R_{t+1})` with `R_T = v_T`.

  Args:
    reward: `[T, ...]` reward received on the transition t -> t+1.
    cont: `[T, ...]` continuation times discount for that transition.
    value: `[T+1, ...]` value estimates v_0 ... v_T.
    lam: the lambda mixing coefficient, a number or `[T, ...]` per transition (0 where the
      return must not chain past `t + 1`, e.g. at a time-limit end: there `R_t` bootstraps
      from `v_{t+1}` alone).
  Returns:
    `[T, ...]` returns R_0 ... R_{T-1}.
  """
  if value.shape[0] != reward.shape[0] + 1:
    raise ValueError(f'value needs one more step than reward: {value.shape} vs {reward.shape}')

  lam = jnp.broadcast_to(jnp.asarray(lam, reward.dtype), reward.shape)

  def backward(next_return, inputs):
    r, c, next_value, mix = inputs
    ret = r + c * ((1.0 - mix) * next_value + mix * next_return)
    return ret, ret

  _, returns = jax.lax.scan(backward, value[-1], (reward, cont, value[1:], lam), reverse=True)
  return returns


def percentile_range_update(low: jax.Array, high: jax.Array, returns: jax.Array, decay: float,
                            percentiles: tuple[float, float] = (5.0, 95.0)):
  """EMA of the `percentiles` of `returns` (DreamerV3 return normalization).

  Returns the new `(low, high)` and the scale `max(1, high - low)` to divide advantages by.
  """
  values = jax.lax.stop_gradient(returns.astype(jnp.float32)).reshape(-1)
  batch_low = jnp.percentile(values, percentiles[0])
  batch_high = jnp.percentile(values, percentiles[1])
  low = decay * low + (1.0 - decay) * batch_low
  high = decay * high + (1.0 - decay) * batch_high
  return low, high, jnp.maximum(1.0, high - low)


def straight_through(sample: jax.Array, probs: jax.Array) -> jax.Array:
  """Forward value `sample`, gradient of `probs`: `sample + (probs - stop_gradient(probs))`.

  The parentheses keep the forward value exact: `(1 + p) - p` rounds to 0.99999994 for some p,
  which then reached the env, the replay and recorded datasets as a not-quite-one-hot action.
  """
  return sample + (probs - jax.lax.stop_gradient(probs))
