"""Flax (linen) building blocks: normalized MLPs, block-diagonal linear layers, CNN encoder/decoder.

Images are `[..., H, W, C]` uint8 or float in [0, 1]; leading axes (e.g. `[B, T]`) are flattened
internally so the CNNs run time-parallel over whole sequences.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax import ops


def activation(name: str):
  return {'silu': nn.silu, 'elu': nn.elu, 'relu': nn.relu, 'tanh': jnp.tanh}[name]


class Norm(nn.Module):
  """LayerNorm (`layer`), RMSNorm (`rms`) or nothing (`none`); computed in float32."""

  kind: str = 'layer'

  @nn.compact
  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if self.kind == 'layer':
      x = nn.LayerNorm(epsilon=1e-3)(x)
    elif self.kind == 'rms':
      x = nn.RMSNorm(epsilon=1e-3)(x)
    elif self.kind != 'none':
      raise ValueError(f'unknown norm {self.kind!r}: use layer, rms or none')
    return x.astype(dtype)


class Dense(nn.Module):
  """Linear -> norm -> activation, the unit every MLP here is made of."""

  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.units, use_bias=self.norm == 'none', dtype=self.dtype)(x)
    return activation(self.act)(Norm(self.norm)(x))


class MLP(nn.Module):
  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for _ in range(self.layers):
      x = Dense(self.units, self.norm, self.act, self.dtype)(x)
    return x


class BlockLinear(nn.Module):
  """Block-diagonal linear map: `blocks` independent linear maps over equal slices of the input.

  Cuts the parameters and FLOPs of the large GRU state of DreamerV3 by a factor of `blocks`.
  """

  features: int
  blocks: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] % self.blocks or self.features % self.blocks:
      raise ValueError(f'BlockLinear: input {x.shape[-1]} and output {self.features} must both be '
                       f'divisible by blocks={self.blocks}')
    in_size, out_size = x.shape[-1] // self.blocks, self.features // self.blocks
    kernel = self.param('kernel', nn.initializers.lecun_normal(batch_axis=(0,)),
                        (self.blocks, in_size, out_size))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = x.reshape(*x.shape[:-1], self.blocks, in_size).astype(self.dtype)
    y = jnp.einsum('...gi,gio->...go', x, kernel.astype(self.dtype))
    return y.reshape(*y.shape[:-2], self.features) + bias.astype(self.dtype)


class Head(nn.Module):
  """MLP trunk followed by a linear output of `outputs` units (zero-initialized if `zero_init`)."""

  outputs: int
  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  zero_init: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = MLP(self.layers, self.units, self.norm, self.act, self.dtype)(x)
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    return nn.Dense(self.outputs, kernel_init=init, dtype=jnp.float32)(x).astype(jnp.float32)


class ImageEncoder(nn.Module):
  """Stride-2 convolutions from 64x64 down to 4x4, then flatten. `[..., H, W, C] -> [..., E]`."""

  depth: int
  multipliers: Sequence[int] = (2, 3, 4, 4)
  kernel: int = 4
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, image):
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:])
    x = (x.astype(jnp.float32) / 255.0 - 0.5) if image.dtype == jnp.uint8 else x - 0.5
    x = x.astype(self.dtype)
    for multiplier in self.multipliers:
      x = nn.Conv(self.depth * multiplier, (self.kernel, self.kernel), strides=2, padding='SAME',
                  use_bias=self.norm == 'none', dtype=self.dtype)(x)
      x = activation(self.act)(Norm(self.norm)(x))
    return x.reshape(*lead, -1)


def depth_to_space(x: jax.Array, factor: int = 2) -> jax.Array:
  """`[N, H, W, C * f * f] -> [N, H * f, W * f, C]` (pixel shuffle)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, factor, factor, c // factor**2)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * factor, w * factor, c // factor**2)


class ImageDecoder(nn.Module):
  """Mirror of `ImageEncoder`: features `[..., F]` -> image mean in [0, 1] `[..., H, W, C]`.

  Each stage doubles the resolution with a sub-pixel convolution (a stride-1 convolution to 4x
  the channels, then `depth_to_space`). A stride-2 transposed convolution computes the same kind
  of map, but XLA's CPU backend runs it as a convolution over a zero-dilated input, 4x the work;
  the sub-pixel form made the 1m image train_step about 2x faster on CPU.
  """

  shape: Sequence[int]  # (H, W, C)
  depth: int
  multipliers: Sequence[int] = (2, 3, 4, 4)
  kernel: int = 4
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features):
    lead = features.shape[:-1]
    height, width, channels = self.shape
    stages = len(self.multipliers)
    min_h, min_w = height >> stages, width >> stages
    widths = [self.depth * m for m in self.multipliers][::-1]
    flat = features.reshape(-1, features.shape[-1])
    x = nn.Dense(min_h * min_w * widths[0], dtype=self.dtype)(flat)
    x = x.reshape(-1, min_h, min_w, widths[0])
    for index, width_out in enumerate(widths[1:] + [channels]):
      last = index == stages - 1
      x = nn.Conv(4 * width_out, (3, 3), padding='SAME', use_bias=last or self.norm == 'none',
                  dtype=self.dtype)(x)
      x = depth_to_space(x)
      if not last:
        x = activation(self.act)(Norm(self.norm)(x))
    x = x.astype(jnp.float32) + 0.5
    return x.reshape(*lead, height, width, channels)


class VectorEncoder(nn.Module):
  """MLP over symlog-squashed vector observations."""

  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, vector):
    return MLP(self.layers, self.units, self.norm, self.act, self.dtype)(ops.symlog(vector))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
