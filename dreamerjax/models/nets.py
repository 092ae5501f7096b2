"""Flax (linen) building blocks: normalized MLPs, block-diagonal linear layers, CNN encoder/decoder.

Images are `[..., H, W, C]` uint8 or float in [0, 1]; leading axes (e.g. `[B, T]`) are flattened
internally so the CNNs run time-parallel over whole sequences. `Conv` computes its convolution in
one of the forms of `convs`; `Dense` multiplies through `products.rows_matmul`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax.models import convs, ops, products


def activation(name: str):
  return {'silu': nn.silu, 'elu': nn.elu, 'relu': nn.relu, 'tanh': jnp.tanh}[name]


class Norm(nn.Module):
  """LayerNorm (`layer`), RMSNorm (`rms`) or nothing (`none`) over the last axis, epsilon 1e-3,
  computed in float32, with flax's parameters (`LayerNorm_0` or `RMSNorm_0`, same names, shapes
  and initial values). With `act`, the activation follows the norm, differentiated together with
  it (`norm_act`): every `Dense` unit and the GRU's hidden layer. The image encoder and decoder
  keep the two apart: on their convolution outputs the fused form raised the 12m image update's
  scratch memory (`arch=public2024`: 3.36 -> 3.81 GB; `paper`: no change)."""

  kind: str = 'layer'
  act: str | None = None

  @nn.compact
  def __call__(self, x):
    if self.kind == 'none':
      return x if self.act is None else activation(self.act)(x)
    if self.kind == 'layer':
      affine = self.param('LayerNorm_0', lambda key: {
          'scale': jnp.ones(x.shape[-1]), 'bias': jnp.zeros(x.shape[-1])})
      scale, bias = affine['scale'], affine['bias']
    elif self.kind == 'rms':
      scale = self.param('RMSNorm_0', lambda key: {'scale': jnp.ones(x.shape[-1])})['scale']
      bias = None
    else:
      raise ValueError(f'unknown norm {self.kind!r}: use layer, rms or none')
    if self.act is None and bias is None:  # RMSNorm alone: autodiff, as flax's
      return _norm_parts(x, scale, bias)[2].astype(x.dtype)
    return norm_act(x, scale, bias, self.act).astype(x.dtype)


def _activation_grad(name: str, z: jax.Array) -> jax.Array:
  """The derivative of `activation(name)` at `z`."""
  if name == 'silu':
    sigmoid = jax.nn.sigmoid(z)
    return sigmoid * (1.0 + z * (1.0 - sigmoid))
  if name == 'elu':
    return jnp.where(z > 0, 1.0, jnp.exp(jnp.minimum(z, 0.0)))
  if name == 'relu':
    return (z > 0).astype(z.dtype)
  if name == 'tanh':
    return 1.0 - jnp.square(jnp.tanh(z))
  raise ValueError(f'unknown activation {name!r}: use silu, elu, relu or tanh')


def _norm_parts(x, scale, bias):
  """`(normed, rstd, z)`: the normalized float32 input, its reciprocal deviation and the norm's
  output (LayerNorm with `bias`, RMSNorm when `bias` is None)."""
  x = x.astype(jnp.float32)
  if bias is None:
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-3)
    normed = x * rstd
    return normed, rstd, normed * scale
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + 1e-3)
  normed = (x - mean) * rstd
  return normed, rstd, normed * scale + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def norm_act(x: jax.Array, scale: jax.Array, bias: jax.Array | None,
             act: str | None) -> jax.Array:
  """`activation(act)(norm(x))` in float32 (`act` None: the norm alone): LayerNorm (`bias`
  given) or RMSNorm (`bias` None) over the last axis, epsilon 1e-3.

  The hand-written gradient keeps only `x` and the parameters, and recomputes the norm and the
  activation from them. Autodiff of the two kept five to seven arrays of `x`'s size per layer:
  at 12m with `arch=public2024`, 21 `[15, 1024, 256]` arrays of the actor through imagination.
  The 12m vector update's scratch memory is 1.22 -> 0.86 GB with this form (docs/benchmarks.md,
  "Norm and activation differentiated together").
  """
  z = _norm_parts(x, scale, bias)[2]
  return z if act is None else activation(act)(z)


def _norm_act_fwd(x, scale, bias, act):
  return norm_act(x, scale, bias, act), (x, scale, bias)


def _norm_act_bwd(act, residuals, g):
  x, scale, bias = residuals
  normed, rstd, z = _norm_parts(x, scale, bias)
  gz = g.astype(jnp.float32)
  if act is not None:
    gz = gz * _activation_grad(act, z)
  lead = tuple(range(g.ndim - 1))
  gs = gz * scale
  dx = gs - normed * jnp.mean(gs * normed, -1, keepdims=True)
  if bias is not None:
    dx = dx - jnp.mean(gs, -1, keepdims=True)
  return ((rstd * dx).astype(x.dtype), jnp.sum(gz * normed, lead),
          None if bias is None else jnp.sum(gz, lead))


norm_act.defvjp(_norm_act_fwd, _norm_act_bwd)


class Dense(nn.Module):
  """Linear -> norm -> activation, the unit every MLP here is made of. The linear map has a bias
  without a norm, or with `bias` (the 2024 public code keeps one in front of every norm)."""

  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.units, use_bias=self.bias or self.norm == 'none', dtype=self.dtype,
                 dot_general=_rows_dot_general)(x)
    return Norm(self.norm, self.act)(x)


def _rows_dot_general(x, w, dimension_numbers, precision=None, preferred_element_type=None):
  """`nn.Dense`'s product (`x [..., K]` by `w [K, O]`) as `products.rows_matmul`."""
  del precision, preferred_element_type
  if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
    raise ValueError(f'_rows_dot_general: expected a product over the last axis of x and the '
                     f'first of w, got dimension numbers {dimension_numbers}')
  return products.rows_matmul(x, w)


class MLP(nn.Module):
  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for _ in range(self.layers):
      x = Dense(self.units, self.norm, self.act, self.dtype, self.bias)(x)
    return x


class BlockLinear(nn.Module):
  """Block-diagonal linear map: `blocks` independent linear maps over equal slices of the input.

  Cuts the parameters and FLOPs of the large GRU state of DreamerV3 by a factor of `blocks`.
  `shared` (optional, `[..., S]`) is an input every block sees in full, as if it were appended to
  each block's slice: the kernel is `[blocks, in / blocks + S, out / blocks]`, and the shared part
  is applied as one dense `[S, out]` product instead of `blocks` products of a repeated input.
  """

  features: int
  blocks: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, shared=None, blocks_major=False):
    """`[..., in]` -> `[..., features]`, or with `blocks_major` `[blocks, N, features / blocks]`
    (N the flattened leading axes): the product's own layout, for elementwise work per block."""
    if x.shape[-1] % self.blocks or self.features % self.blocks:
      raise ValueError(f'BlockLinear: input {x.shape[-1]} and output {self.features} must both be '
                       f'divisible by blocks={self.blocks}')
    if blocks_major and shared is not None:
      raise ValueError('BlockLinear: blocks_major output takes no shared input')
    in_size, out_size = x.shape[-1] // self.blocks, self.features // self.blocks
    shared_size = 0 if shared is None else shared.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(batch_axis=(0,)),
                        (self.blocks, in_size + shared_size, out_size)).astype(self.dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    lead = x.shape[:-1]
    # Blocks leading ([g, N, i] x [g, i, o] -> [g, N, o]) so the product and its consumers keep
    # the rows contiguous; XLA's CPU layout for the '...gi,gio' form put the batch axis minor.
    blocks, dense = self._kernel_parts(kernel, in_size)
    x = x.reshape(-1, self.blocks, in_size).astype(self.dtype).transpose(1, 0, 2)
    y = jnp.einsum('gni,gio->gno', x, blocks)
    if blocks_major:
      return y + bias.reshape(self.blocks, 1, out_size).astype(self.dtype)
    y = y.transpose(1, 0, 2).reshape(-1, self.features)
    if shared is not None:
      y = y + shared.reshape(-1, shared_size).astype(self.dtype) @ dense
    return y.reshape(*lead, self.features) + bias.astype(self.dtype)

  def _kernel_parts(self, kernel: jax.Array, in_size: int) -> tuple[jax.Array, jax.Array | None]:
    """The kernel's block part `[blocks, in / blocks, out / blocks]` and its shared part as one
    dense `[S, out]` matrix (None without a shared input); `in_size` = in / blocks."""
    blocks = kernel[:, :in_size]
    if kernel.shape[1] == in_size:
      return blocks, None
    return blocks, kernel[:, in_size:].transpose(1, 0, 2).reshape(-1, self.features)

  def transposed_kernel(self, kernel: jax.Array, in_features: int) -> dict:
    """`kernel [blocks, in / blocks + S, out / blocks]` laid out for `input_grads`: the block
    part as `[blocks, out / blocks, in / blocks]` and the shared part as `[out, S]`, in the
    compute dtype. Made once outside a loop that applies the layer with fixed parameters, so
    that the loop's backward products read their weights in row order."""
    blocks, dense = self._kernel_parts(kernel, in_features // self.blocks)
    parts = {'blocks': blocks.transpose(0, 2, 1).astype(self.dtype)}
    if dense is not None:
      parts['shared'] = dense.T.astype(self.dtype)
    return parts

  def input_grads(self, transposed: dict, g: jax.Array, x, shared=None,
                  blocks_major=False) -> list[jax.Array]:
    """The gradients of `x` (and of `shared`) at the output gradient `g`, from
    `transposed_kernel`; `x` and `shared` need only shapes and dtypes, the call's others as in
    `__call__`."""
    blocks_t = transposed['blocks']
    out_size = blocks_t.shape[1]
    g = g.astype(self.dtype)
    rows = g if blocks_major else g.reshape(-1, self.blocks, out_size).transpose(1, 0, 2)
    dx = jnp.einsum('gno,goi->gni', rows, blocks_t).transpose(1, 0, 2)
    grads = [dx.reshape(x.shape).astype(x.dtype)]
    if shared is not None:
      d_shared = g.reshape(-1, self.features) @ transposed['shared']
      grads.append(d_shared.reshape(shared.shape).astype(shared.dtype))
    return grads


class Head(nn.Module):
  """MLP trunk followed by a linear output of `outputs` units (zero-initialized if `zero_init`)."""

  outputs: int
  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  zero_init: bool = False
  dtype: jnp.dtype = jnp.float32
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = MLP(self.layers, self.units, self.norm, self.act, self.dtype, self.bias)(x)
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    return nn.Dense(self.outputs, kernel_init=init, dtype=jnp.float32)(x).astype(jnp.float32)


class ImageEncoder(nn.Module):
  """Stride-2 convolutions from 64x64 down to 4x4, then flatten. `[..., H, W, C] -> [..., E]`.

  With `pool`, each stage is a stride-1 convolution followed by a 2x2 max pool instead (the 2024
  public code's CNN: 4x the convolution work of the stride-2 form at the same kernel).
  """

  depth: int
  multipliers: Sequence[int] = (2, 3, 4, 4)
  kernel: int = 4
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False
  pool: bool = False

  @nn.compact
  def __call__(self, image):
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:])
    x = (x.astype(jnp.float32) / 255.0 - 0.5) if image.dtype == jnp.uint8 else x - 0.5
    x = x.astype(self.dtype)
    for multiplier in self.multipliers:
      x = Conv(self.depth * multiplier, self.kernel, stride=1 if self.pool else 2,
               use_bias=self.bias or self.norm == 'none', dtype=self.dtype, pool=self.pool)(x)
      x = activation(self.act)(Norm(self.norm)(x))
    return x.reshape(*lead, -1)


class Conv(nn.Module):
  """Square convolution through `convs.patch_conv` ('SAME' padding for stride 2 and even
  kernels), or with `upsample=True` the 4x4 stride-2 transposed convolution of
  `convs.upsample_conv`. A stride-1
  convolution with an odd kernel may take `nearest` (a 2x nearest-neighbour upsampling of its
  input first) and `pool` (a 2x2 max pool of its output, before the bias), as `convs.same_conv`."""

  features: int
  kernel: int = 4
  stride: int = 1
  upsample: bool = False
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  nearest: bool = False
  pool: bool = False

  @nn.compact
  def __call__(self, x):
    k, out = (2, 4 * self.features) if self.upsample else (self.kernel, self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                        (k, k, x.shape[-1], out))
    x = x.astype(self.dtype)
    if self.upsample:
      y = convs.upsample_conv(x, kernel)
    elif self.nearest or self.pool:
      if self.stride != 1 or self.kernel % 2 == 0:
        raise ValueError(f'nearest / pool need a stride-1 convolution with an odd kernel, got '
                         f'kernel {self.kernel}, stride {self.stride}')
      y = convs.same_conv(x, kernel, convs.SAME_CONV, self.nearest, self.pool)
    else:
      y = convs.patch_conv(x, kernel, self.stride, pad=max(self.kernel - self.stride, 0) // 2)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class ImageDecoder(nn.Module):
  """Mirror of `ImageEncoder`: features `[..., F]` -> image mean in [0, 1] `[..., H, W, C]`.

  Each stage doubles the resolution like a stride-2 4x4 transposed convolution (see
  `convs.upsample_conv` for why it is not written as one). The 2024 public code's form instead:
  `pool` (each stage a nearest-neighbour 2x upsampling and a stride-1 `kernel` convolution, and a
  sigmoid output), `blocks` > 0 (the first 4x4 grid from a `blocks`-block linear map of the
  deterministic state, the first `deter` features, plus a two-layer MLP of the rest), `bias`.
  """

  shape: Sequence[int]  # (H, W, C)
  depth: int
  multipliers: Sequence[int] = (2, 3, 4, 4)
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False
  pool: bool = False
  kernel: int = 5
  blocks: int = 0
  deter: int = 0
  units: int = 0

  @nn.compact
  def __call__(self, features):
    lead = features.shape[:-1]
    height, width, channels = self.shape
    stages = len(self.multipliers)
    min_h, min_w = height >> stages, width >> stages
    widths = [self.depth * m for m in self.multipliers][::-1]
    flat = features.reshape(-1, features.shape[-1])
    x = self._grid(flat, min_h, min_w, widths[0])
    for index, width_out in enumerate(widths[1:] + [channels]):
      last = index == stages - 1
      use_bias = last or self.bias or self.norm == 'none'
      if self.pool:
        x = Conv(width_out, self.kernel, use_bias=use_bias, dtype=self.dtype, nearest=True)(x)
      else:
        x = Conv(width_out, upsample=True, use_bias=use_bias, dtype=self.dtype)(x)
      if not last:
        x = activation(self.act)(Norm(self.norm)(x))
    x = x.astype(jnp.float32)
    x = jax.nn.sigmoid(x) if self.pool else x + 0.5
    return x.reshape(*lead, height, width, channels)

  def _grid(self, flat, min_h, min_w, channels):
    """The first `[N, min_h, min_w, channels]` feature grid."""
    if not self.blocks:
      x = nn.Dense(min_h * min_w * channels, dtype=self.dtype)(flat)
      return x.reshape(-1, min_h, min_w, channels)
    size = min_h * min_w * channels
    deter, stoch = flat[:, :self.deter], flat[:, self.deter:]
    # Block g fills channels [g * C / blocks, (g + 1) * C / blocks) of every grid cell.
    x0 = BlockLinear(size, self.blocks, self.dtype)(deter)
    x0 = x0.reshape(-1, self.blocks, min_h, min_w, channels // self.blocks)
    x0 = x0.transpose(0, 2, 3, 1, 4).reshape(-1, min_h, min_w, channels)
    x1 = Dense(2 * self.units, self.norm, self.act, self.dtype, self.bias)(stoch)
    x1 = nn.Dense(size, dtype=self.dtype)(x1).reshape(-1, min_h, min_w, channels)
    return activation(self.act)(Norm(self.norm)(x0 + x1))


class VectorEncoder(nn.Module):
  """MLP over symlog-squashed vector observations."""

  layers: int
  units: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False

  @nn.compact
  def __call__(self, vector):
    return MLP(self.layers, self.units, self.norm, self.act, self.dtype,
               self.bias)(ops.symlog(vector))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
