"""Flax (linen) building blocks: normalized MLPs, block-diagonal linear layers, CNN encoder/decoder.

Images are `[..., H, W, C]` uint8 or float in [0, 1]; leading axes (e.g. `[B, T]`) are flattened
internally so the CNNs run time-parallel over whole sequences.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax.models import chunked_conv, ops, pooling


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
  """`nn.Dense`'s product (`x [..., K]` by `w [K, O]`) as `rows_matmul`."""
  del precision, preferred_element_type
  if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
    raise ValueError(f'_rows_dot_general: expected a product over the last axis of x and the '
                     f'first of w, got dimension numbers {dimension_numbers}')
  return rows_matmul(x, w)


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


def patch_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """Convolution as one matrix product over extracted patches (im2col).

  `x`: `[N, H, W, C]`, `kernel`: `[k, k, C, O]`, zero padding `pad` on every side. On XLA's CPU
  backend the gradient of `lax.conv` is several times slower than its forward pass; slicing out
  the k*k shifted views and multiplying once is 1.6x (4x4 stride 2) to 3x (2x2) faster forward
  plus backward at the world model's shapes (`scripts/benchmark.py --only=train_step`).
  A strided convolution whose kernel the stride divides runs as a stride-1 convolution over
  `space_to_depth(x)`: (k/s)^2 views of s*s*C channels instead of k^2 strided views of C (the
  same patches, 13% faster encoder forward plus backward at 12m: wider contiguous copies).
  With fewer outputs than input channels (the encoder's stride-1 forms after `space_to_depth`,
  except the first), one product gives every input pixel's contribution to each of its k*k
  windows and `_window_sum` adds them up: k*k*O columns instead of a k*k*C wide patch matrix
  (encoder forward plus backward at 1024 frames, 12m: 1.41-1.59 -> 1.17-1.26 s).
  A stride-1 convolution with 'SAME' padding and an odd kernel (the 5x5 ones of
  `arch=public2024`) runs as `same_conv(..., SAME_CONV)` instead.
  """
  k = kernel.shape[0]
  if stride == 1 and 2 * pad == k - 1:
    return same_conv(x, kernel, SAME_CONV)
  return _patch_products(x, kernel, stride, pad)


# How `patch_conv` computes stride-1 'SAME' convolutions with an odd kernel (those of
# `arch=public2024`; the `paper` networks have none): `auto` (`same_conv_form`), `chunked`,
# `lax`, `shift`, `rows` or `patch` (see `same_conv`). `chunked`, `lax` and `shift` keep no patch
# copies for the backward pass, so the 12m update fits in host memory (the patch matrices were
# 1.3-3.3 GB per layer at 1024 frames). `chunked` (`chunked_conv.conv`) runs the 3-channel image
# layers, with their stage's pooling or upsampling, as patch products built a few frames at a
# time, and the 32x32 layers' kernel gradients as well; over the eight 12m layers it took 0.48x
# `shift`'s time with XLA:CPU's convolutions in YNNPACK, and 2.19 s against `lax`'s 2.69 s and
# `shift`'s 4.67 s with them in Eigen (`dreamerjax.CPU_XLA_FLAGS`; `benchmark.conv_profile`,
# benchmarks/conv_profile_12m_eigen.json).
SAME_CONV = 'auto'


def same_conv_form() -> str:
  """The form `auto` stands for: `chunked` on one CPU device, `lax` elsewhere. `chunked` loops
  over the frames, which a batch sharded over devices splits: XLA would gather every frame onto
  every device (tests/test_chunked_conv.py). `lax` is the accelerators' own convolution (the
  forms have not been timed against each other there); on CPU, over the eight 12m layers on one
  device, it took 2.69 s against `shift`'s 4.67 s with the convolutions in Eigen
  (`benchmarks/conv_profile_12m_eigen.json`)."""
  return 'chunked' if jax.default_backend() == 'cpu' and jax.device_count() == 1 else 'lax'


def same_conv(x: jax.Array, kernel: jax.Array, impl: str = 'lax', nearest: bool = False,
              pool: bool = False) -> jax.Array:
  """Stride-1 convolution with 'SAME' padding and an odd kernel, `[N, H, W, C]` * `[k, k, C, O]`;
  with `nearest`, of the input upsampled 2x (nearest neighbour), and with `pool`, followed by 2x2
  max pooling (`pooling.max_pool`): the 2024 public code's decoder and encoder stages.

  `impl`: `auto` (`same_conv_form`), `chunked` (`chunked_conv.conv`), `lax` (`lax_conv`),
  `shift` (`shift_conv`: `lax` with the kernel gradient as k*k products), `rows` (`row_conv`:
  one product per kernel row over a 1/k size patch matrix) or `patch` (a k*k*C wide patch
  matrix, or with fewer outputs than inputs one product over the input and `_window_sum`). All
  agree to float tolerance, gradients included (tests/test_public_arch.py).
  """
  k = kernel.shape[0]
  pad = (k - 1) // 2
  if impl == 'auto':
    impl = same_conv_form()
  if impl == 'chunked':
    return chunked_conv.conv(x, kernel, nearest, pool)
  if nearest:
    x = pooling.upsample(x)
  if pool:
    return pooling.max_pool(same_conv(x, kernel, impl))
  if impl == 'lax':
    return lax_conv(x, kernel, pad)
  if impl == 'shift':
    return shift_conv(x, kernel, pad)
  if impl == 'rows':
    return row_conv(x, kernel, pad)
  if impl != 'patch':
    raise ValueError(f'unknown convolution form {impl!r}: use auto, chunked, lax, shift, rows '
                     'or patch')
  if kernel.shape[-1] >= x.shape[-1]:
    return _patch_products(x, kernel, 1, pad)
  # The window sum below over the unpadded input: padding contributes nothing, so the product
  # runs over the H x W pixels only (at 16x16 with a 5x5 kernel, 20x20 padded: 1.56x the work).
  n, h, w, c = x.shape
  z = rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
  z = jnp.pad(z.reshape(n, h, w, k * k, -1), ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
  return _window_sum(z, k)


def _patch_products(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """`patch_conv` by patch matrices (see there)."""
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  if stride > 1 and k % stride == 0 and x.shape[1] % stride == 0 and x.shape[2] % stride == 0:
    x, kernel = space_to_depth(x, stride), kernel_to_depth(kernel, stride)
    k, stride = k // stride, 1
  n, h, w, c = x.shape
  out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
  if stride == 1 and kernel.shape[-1] < c:
    z = rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
    return _window_sum(z.reshape(n, h, w, k * k, -1), k)
  views = [x[:, a:a + stride * (out_h - 1) + 1:stride, b:b + stride * (out_w - 1) + 1:stride]
           for a in range(k) for b in range(k)]
  return rows_matmul(jnp.concatenate(views, -1), kernel.reshape(k * k * c, -1).astype(x.dtype))


lax_conv = chunked_conv.lax_conv


# `shift_conv` takes its kernel gradient from k*k products only where the layer has at least this
# many outputs: with fewer (the 3-channel image layer) the products are thin and XLA's own
# gradient convolution is faster (docs/benchmarks.md).
SHIFT_MIN_OUTPUTS = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shift_conv(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """`lax_conv` with a hand-written kernel gradient: one `[C, N*H*W] x [N*H*W, O]` product per
  kernel offset over the shifted padded input, in a loop over the offsets (XLA:CPU of jax 0.10
  runs the autodiff kernel gradient of these convolutions at 2.5-3x the cost of the forward
  pass). The input gradient is autodiff's."""
  return lax_conv(x, kernel, pad)


def _shift_conv_fwd(x, kernel, pad):
  return lax_conv(x, kernel, pad), (x, kernel)


def _shift_conv_bwd(pad, residuals, g):
  x, kernel = residuals
  k, _, c, o = kernel.shape
  if o < SHIFT_MIN_OUTPUTS:
    return jax.vjp(lambda x, kernel: lax_conv(x, kernel, pad), x, kernel)[1](g)
  dx, = jax.vjp(lambda x: lax_conv(x, kernel, pad), x)[1](g)  # the kernel's is computed below
  n, h, w, _ = g.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = g.reshape(-1, o).astype(x.dtype)

  def offset_product(offset):
    view = jax.lax.dynamic_slice(padded, (0, offset // k, offset % k, 0), (n, h, w, c))
    return weight_grad(view.reshape(-1, c), rows)

  # One loop over the k*k offsets rather than k*k products in the program: the same products
  # and seconds per call, a quarter of each layer gradient's compile time (docs/benchmarks.md).
  dk = jax.lax.map(offset_product, jnp.arange(k * k)).reshape(k, k, c, o)
  return dx, dk.astype(kernel.dtype)


shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def row_conv(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """Stride-1 convolution as k products, one per kernel row, over one `[N, H + 2 pad, W, k*C]`
  matrix of the k column-shifted views (1/k of the k*k*C wide patch matrix of `patch_conv`, and
  the only array kept for the backward pass)."""
  k, _, c, _ = kernel.shape
  out_w = x.shape[2] + 2 * pad - k + 1
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = jnp.concatenate([x[:, :, b:b + out_w] for b in range(k)], -1)
  return _row_products(rows, kernel.reshape(k, k * c, -1).astype(x.dtype))


@jax.custom_vjp
def _row_products(rows: jax.Array, kernel: jax.Array) -> jax.Array:
  """`[N, H + k - 1, W, K]`, `[k, K, O]` -> `[N, H, W, O]`: output row `i` sums
  `rows[:, i + a] @ kernel[a]` over the kernel rows `a`."""
  k = kernel.shape[0]
  out_h = rows.shape[1] - k + 1
  return sum(rows[:, a:a + out_h] @ kernel[a] for a in range(k))


def _row_products_fwd(rows, kernel):
  return _row_products(rows, kernel), (rows, kernel)


def _row_products_bwd(residuals, g):
  rows, kernel = residuals
  k, width, out = kernel.shape
  out_h = g.shape[1]
  flat = g.reshape(-1, out)
  dkernel = jnp.stack([weight_grad(rows[:, a:a + out_h].reshape(-1, width), flat)
                       for a in range(k)])
  # Row r of `rows` received row r - a of the output through kernel row a.
  taps = g @ kernel.transpose(2, 0, 1).reshape(out, k * width)
  taps = taps.reshape(*g.shape[:3], k, width)
  drows = sum(jnp.pad(taps[:, :, :, a], ((0, 0), (a, k - 1 - a), (0, 0), (0, 0)))
              for a in range(k))
  return drows, dkernel.astype(kernel.dtype)


_row_products.defvjp(_row_products_fwd, _row_products_bwd)


@jax.custom_vjp
def rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w` for `x [..., K]`, `w [K, O]`, differentiated as two explicit 2-D products:
  `dx = g @ w.T` and `dw = x.T @ g` over all `M` rows of `x` at once (`weight_grad`).

  For the convolutions' patch products, autodiff leaves XLA:CPU a layout choice it makes badly:
  it copies every output gradient to a transposed `[O, M]` array (a full-size copy per layer)
  and runs the kernel gradient as an Eigen product. Written out, encoder forward+backward at
  1024 frames (12m) takes 1.43 s instead of 1.96 s, the decoder 1.48 s instead of 2.34 s.
  `Dense` multiplies through it too (`_rows_dot_general`).
  """
  return x @ w


def weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """`x.T @ g` for `x [M, K]`, `g [M, O]`: a weight's gradient summed over `M` rows.

  XLA:CPU runs `x.T @ g` (both operands contracted over their leading axis) as an Eigen product,
  slower than its YNN products. With many rows and an input at least twice as wide as the output
  (a layer's first product), `(g.T @ x).T` is 1.1-1.8x faster (docs/benchmarks.md): a YNN
  product, then a transpose of the small `[O, K]` result, which the optimization barrier keeps XLA
  from folding back into the product. Elsewhere the plain form is as fast or faster.
  """
  if x.shape[0] >= 256 and x.shape[1] >= 2 * g.shape[1]:
    return jax.lax.optimization_barrier(g.T @ x).T
  return x.T @ g


def _rows_matmul_fwd(x, w):
  return x @ w, (x, w)


def linear_grads(x: jax.Array, w: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(dx, dw)` of `x @ w` (`x [..., K]`, `w [K, O]`) at the output gradient `g [..., O]`:
  `g @ w.T`, and `weight_grad` over all rows of `x` (cast to `w`'s dtype)."""
  dw = weight_grad(x.reshape(-1, w.shape[0]), g.reshape(-1, w.shape[1]))
  return g @ w.T, dw.astype(w.dtype)


def _rows_matmul_bwd(residuals, g):
  return linear_grads(*residuals, g)


rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_sum(z: jax.Array, k: int) -> jax.Array:
  """`chunked_conv.window_sum` with a hand-written gradient (the taps' shifted outputs)."""
  return chunked_conv.window_sum(z, k)


def _window_sum_fwd(z, k):
  return _window_sum(z, k), z.shape


def _window_sum_bwd(k, shape, dy):
  # Tap (a, b) of pixel (h, w) receives the gradient of output (h - a, w - b), zero outside.
  taps = [jnp.pad(dy, ((0, 0), (a, k - 1 - a), (b, k - 1 - b), (0, 0)))
          for a in range(k) for b in range(k)]
  return (jnp.stack(taps, 3).reshape(shape),)


_window_sum.defvjp(_window_sum_fwd, _window_sum_bwd)


space_to_depth = pooling.space_to_depth


def kernel_to_depth(kernel: jax.Array, size: int) -> jax.Array:
  """The kernel of a stride-`size` convolution as the stride-1 kernel over `space_to_depth`
  inputs: `[k, k, C, O]` -> `[k/size, k/size, size*size*C, O]`; tap `(size*i + p, size*j + q)`
  becomes tap `(i, j)`, input channel `(p, q, c)`."""
  k, _, c, o = kernel.shape
  kernel = kernel.reshape(k // size, size, k // size, size, c, o).transpose(0, 2, 1, 3, 4, 5)
  return kernel.reshape(k // size, k // size, size * size * c, o)


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-2 transposed convolution with a 4x4 kernel ('SAME', output 2x the input size)
  computed as one stride-1 2x2 convolution plus an interleave of its four output phases.

  `x`: `[N, H, W, C]`; `kernel`: `[2, 2, C, 2 * 2 * O]` (phase-major output channels). Output
  phase `(p, q)` of pixel `(i, j)` reads the 2x2 input window starting at `(i + p - 1, j + q - 1)`,
  exactly the taps a 4x4 transposed convolution uses there. XLA's CPU backend runs a strided
  transposed convolution over a zero-dilated input (4x the work); this form does the same
  multiply-adds as the transposed convolution itself, (H+1)(W+1)/(HW) of them. With fewer than
  C/4 outputs (the decoder's last layer: 32 channels in, 3 out) `_upsample_overlap_add` does the
  same sum without the patch matrix, which would be 4C wide for 4 x 3 outputs.
  """
  n, h, w, c = x.shape
  if kernel.shape[-1] < c:
    return _upsample_overlap_add(x, kernel)
  y = patch_conv(x, kernel, stride=1, pad=1)                 # [N, H+1, W+1, 4 * O]
  y = y.reshape(n, h + 1, w + 1, 2, 2, -1)
  phases = [[y[:, p:p + h, q:q + w, p, q] for q in (0, 1)] for p in (0, 1)]
  y = jnp.stack([jnp.stack(row, 3) for row in phases], 2)    # [N, H, 2, W, 2, O]
  return y.reshape(n, 2 * h, 2 * w, -1)


def _upsample_overlap_add(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`upsample_conv` for few output channels: every input pixel's contribution to its 4x4 output
  window comes from one product with the input (no patch copies), then the windows are summed."""
  n, h, w, c = x.shape
  z = rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
  return _overlap_add(z.reshape(n, h, w, 2, 2, 2, 2, kernel.shape[-1] // 4))


@jax.custom_vjp
def _overlap_add(z: jax.Array) -> jax.Array:
  """`[N, H, W, a, b, p, q, O]` -> `[N, 2H, 2W, O]`: output phase `(p, q)` at `(i, j)` sums tap
  `(a, b)` of input pixel `(i + p + a - 1, j + q + b - 1)` (zero outside the input)."""
  n, h, w = z.shape[:3]
  z = jnp.pad(z, ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * 5)
  phases = [[sum(z[:, p + a:p + a + h, q + b:q + b + w, a, b, p, q] for a in (0, 1) for b in (0, 1))
             for q in (0, 1)] for p in (0, 1)]
  y = jnp.stack([jnp.stack(row, 3) for row in phases], 2)    # [N, H, 2, W, 2, O]
  return y.reshape(n, 2 * h, 2 * w, -1)


def _overlap_add_fwd(z):
  return _overlap_add(z), z.shape


def _overlap_add_bwd(shape, dy):
  # The transpose gathers: tap (a, b, p, q) of pixel (m, w) receives phase (p, q)'s gradient at
  # (m - p - a + 1, w - q - b + 1). Written out because autodiff of the padded slices above
  # materializes one full-size padded array per tap.
  n, h, w = shape[:3]
  dy = dy.reshape(n, h, 2, w, 2, -1)
  dy = jnp.pad(dy, ((0, 0), (1, 1), (0, 0), (1, 1), (0, 0), (0, 0)))
  taps = [dy[:, 2 - p - a:2 - p - a + h, p, 2 - q - b:2 - q - b + w, q]
          for a in (0, 1) for b in (0, 1) for p in (0, 1) for q in (0, 1)]
  return (jnp.stack(taps, 3).reshape(shape),)


_overlap_add.defvjp(_overlap_add_fwd, _overlap_add_bwd)


class Conv(nn.Module):
  """Square convolution through `patch_conv` ('SAME' padding for stride 2 and even kernels),
  or with `upsample=True` the 4x4 stride-2 transposed convolution of `upsample_conv`. A stride-1
  convolution with an odd kernel may take `nearest` (a 2x nearest-neighbour upsampling of its
  input first) and `pool` (a 2x2 max pool of its output, before the bias), as `same_conv`."""

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
      y = upsample_conv(x, kernel)
    elif self.nearest or self.pool:
      if self.stride != 1 or self.kernel % 2 == 0:
        raise ValueError(f'nearest / pool need a stride-1 convolution with an odd kernel, got '
                         f'kernel {self.kernel}, stride {self.stride}')
      y = same_conv(x, kernel, SAME_CONV, self.nearest, self.pool)
    else:
      y = patch_conv(x, kernel, self.stride, pad=max(self.kernel - self.stride, 0) // 2)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class ImageDecoder(nn.Module):
  """Mirror of `ImageEncoder`: features `[..., F]` -> image mean in [0, 1] `[..., H, W, C]`.

  Each stage doubles the resolution like a stride-2 4x4 transposed convolution (see
  `upsample_conv` for why it is not written as one). The 2024 public code's form instead:
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
