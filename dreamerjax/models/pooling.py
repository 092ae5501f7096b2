"""2x2 max pooling (the 2024 public code's image encoder) whose gradient goes to the first
maximum of each window.

Autodiff of `x.reshape(..., 2, ..., 2, ...).max(...)` splits the gradient between tied maxima,
which costs an equality mask, a count of the ties and a division over the full-size input: 0.186
s forward plus backward for `[1024, 64, 64, 32]` on the 2-core CPU, against 0.12 s for this form
(docs/benchmarks.md). Ties are common in the first layer (flat regions of a frame give identical
convolution outputs); either choice is a valid subgradient, and sending all of it to the first
maximum in (row, column) order is what `lax.reduce_window`'s select-and-scatter does too.

  max_pool(x)         `[N, H, W, C]` -> `[N, H/2, W/2, C]`, differentiable.
  pool_with_index(x)  the pooled values and the position of each window's first maximum
                      (uint8: 2 * row + column).
  unpool(g, index)    the pooled gradient back at those positions, zeros elsewhere.
  upsample(x)         nearest-neighbour 2x upsampling (the 2024 public code's decoder),
                      `[N, H, W, C]` -> `[N, 2 H, 2 W, C]`; its gradient is `sum_pool`.
  sum_pool(z)         each 2x2 window summed, `[N, 2 H, 2 W, C]` -> `[N, H, W, C]`.
  space_to_depth(x, size), depth_to_space(y, size)
                      each `size x size` window as channels (row, column, C), and back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _windows(x: jax.Array) -> list[jax.Array]:
  """The four `[N, H/2, W/2, C]` views of each window's (row, column) = (0, 0), (0, 1), (1, 0),
  (1, 1) values."""
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'2x2 max pooling needs an even height and width, got {h}x{w}: use an image '
                     'size divisible by 2 ** len(multipliers)')
  x = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return [x[:, :, a, :, b] for a in (0, 1) for b in (0, 1)]


def pool_with_index(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(pooled, index)`: each window's maximum and where its first maximum sits."""
  views = _windows(x)
  pooled = jnp.maximum(jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3]))
  index = jnp.where(views[0] == pooled, 0,
                    jnp.where(views[1] == pooled, 1, jnp.where(views[2] == pooled, 2, 3)))
  return pooled, index.astype(jnp.uint8)


def unpool(g: jax.Array, index: jax.Array) -> jax.Array:
  """`[N, H/2, W/2, C]` -> `[N, H, W, C]`: `g` at each window's `index`, zero elsewhere."""
  n, h, w, c = g.shape
  zero = jnp.zeros((), g.dtype)
  taps = [jnp.where(index == position, g, zero) for position in range(4)]
  # taps[2 a + b] is the window's (a, b) value: stack to [N, H/2, 2, W/2, 2, C].
  rows = [jnp.stack(taps[2 * a:2 * a + 2], 3) for a in (0, 1)]
  return jnp.stack(rows, 2).reshape(n, 2 * h, 2 * w, c)


@jax.custom_vjp
def max_pool(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2, `[N, H, W, C]` -> `[N, H/2, W/2, C]`."""
  return pool_with_index(x)[0]


def _max_pool_bwd(index, g):
  return (unpool(g, index),)


# The forward rule is `pool_with_index`: the output and, as the residual, the positions.
max_pool.defvjp(pool_with_index, _max_pool_bwd)


def sum_pool(z: jax.Array) -> jax.Array:
  """The transpose of `upsample`: each 2x2 window summed. Written as four strided views added
  rather than a reduction: XLA:CPU fused a reduction and the convolution producing `z` into one
  YNNPACK fusion, which ran the convolution at about half the speed of Eigen's (the 12m
  decoder's 32x32 input gradient: 0.39 s; docs/benchmarks.md)."""
  return z[:, 0::2, 0::2] + z[:, 0::2, 1::2] + z[:, 1::2, 0::2] + z[:, 1::2, 1::2]


def space_to_depth(x: jax.Array, size: int) -> jax.Array:
  """`[N, H, W, C]` -> `[N, H/size, W/size, size*size*C]`, channels ordered (row, column, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // size, w // size, size * size * c)


def depth_to_space(y: jax.Array, size: int) -> jax.Array:
  """The inverse of `space_to_depth`: `[N, H, W, size*size*C]` -> `[N, size*H, size*W, C]`."""
  n, h, w, c = y.shape
  y = y.reshape(n, h, w, size, size, c // (size * size)).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, size * h, size * w, c // (size * size))


@jax.custom_vjp
def upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling, `[N, H, W, C]` -> `[N, 2 H, 2 W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)


def _upsample_fwd(x):
  return upsample(x), None


def _upsample_bwd(_, g):
  return (sum_pool(g),)


upsample.defvjp(_upsample_fwd, _upsample_bwd)
