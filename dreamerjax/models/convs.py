"""Convolution forms of the image encoder and decoder (`nets.Conv`), each the same function as
XLA's own convolution, written for XLA:CPU:

  patch_conv(x, kernel, stride, pad)  a convolution as one product over its patch matrix; a
                                      strided one over `pooling.space_to_depth` of its input
  same_conv(x, kernel, impl, ...)     stride-1 'SAME' with an odd kernel (`arch=public2024`), in
                                      the form `impl` names (`SAME_CONV`, read at each call):
                                      `chunked` (`chunked_conv`), `lax`, `shift`, `rows`, `patch`
  upsample_conv(x, kernel)            the 4x4 stride-2 transposed convolution of the `paper`
                                      decoder, as a 2x2 convolution and its four output phases

`x [N, H, W, C]`, `kernel [k, k, C, O]`. Every form agrees with `lax.conv_general_dilated` to
float tolerance, gradients included (tests/test_agent.py, tests/test_public_arch.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dreamerjax.models import chunked_conv, pooling, products


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
  z = products.rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
  z = jnp.pad(z.reshape(n, h, w, k * k, -1), ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
  return _window_sum(z, k)


def _patch_products(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """`patch_conv` by patch matrices (see there)."""
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  if stride > 1 and k % stride == 0 and x.shape[1] % stride == 0 and x.shape[2] % stride == 0:
    x, kernel = pooling.space_to_depth(x, stride), kernel_to_depth(kernel, stride)
    k, stride = k // stride, 1
  n, h, w, c = x.shape
  out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
  if stride == 1 and kernel.shape[-1] < c:
    z = products.rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
    return _window_sum(z.reshape(n, h, w, k * k, -1), k)
  views = [x[:, a:a + stride * (out_h - 1) + 1:stride, b:b + stride * (out_w - 1) + 1:stride]
           for a in range(k) for b in range(k)]
  matrix = kernel.reshape(k * k * c, -1).astype(x.dtype)
  return products.rows_matmul(jnp.concatenate(views, -1), matrix)


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
    return products.weight_grad(view.reshape(-1, c), rows)

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
  dkernel = jnp.stack([products.weight_grad(rows[:, a:a + out_h].reshape(-1, width), flat)
                       for a in range(k)])
  # Row r of `rows` received row r - a of the output through kernel row a.
  taps = g @ kernel.transpose(2, 0, 1).reshape(out, k * width)
  taps = taps.reshape(*g.shape[:3], k, width)
  drows = sum(jnp.pad(taps[:, :, :, a], ((0, 0), (a, k - 1 - a), (0, 0), (0, 0)))
              for a in range(k))
  return drows, dkernel.astype(kernel.dtype)


_row_products.defvjp(_row_products_fwd, _row_products_bwd)




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
  return _interleave([y[:, p:p + h, q:q + w, p, q] for p in (0, 1) for q in (0, 1)])


def _interleave(phases: list[jax.Array]) -> jax.Array:
  """The four output phases `[N, H, W, O]`, in (row, column) order, put at their pixels:
  `[N, 2 H, 2 W, O]` (`pooling.depth_to_space`)."""
  n, h, w, _ = phases[0].shape
  return pooling.depth_to_space(jnp.stack(phases, 3).reshape(n, h, w, -1), 2)


def _upsample_overlap_add(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`upsample_conv` for few output channels: every input pixel's contribution to its 4x4 output
  window comes from one product with the input (no patch copies), then the windows are summed."""
  n, h, w, c = x.shape
  z = products.rows_matmul(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1).astype(x.dtype))
  return _overlap_add(z.reshape(n, h, w, 2, 2, 2, 2, kernel.shape[-1] // 4))


@jax.custom_vjp
def _overlap_add(z: jax.Array) -> jax.Array:
  """`[N, H, W, a, b, p, q, O]` -> `[N, 2H, 2W, O]`: output phase `(p, q)` at `(i, j)` sums tap
  `(a, b)` of input pixel `(i + p + a - 1, j + q + b - 1)` (zero outside the input)."""
  h, w = z.shape[1:3]
  z = jnp.pad(z, ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * 5)
  return _interleave([sum(z[:, p + a:p + a + h, q + b:q + b + w, a, b, p, q]
                          for a in (0, 1) for b in (0, 1))
                      for p in (0, 1) for q in (0, 1)])


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
