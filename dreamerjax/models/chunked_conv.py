"""Stride-1 'SAME' convolutions of `arch=public2024`'s CNN: the layers with few input or output
channels as products over patch matrices built a few frames at a time, the others with a
kernel gradient laid out for XLA:CPU, and a layer over a 2x upsampled input as a smaller kernel
over the input itself, one output per phase.

XLA:CPU (jax 0.10, convolutions in Eigen: `dreamerjax.CPU_XLA_FLAGS`) runs a layer with 3
channels on one side (the image layers: 3 -> 32 in the encoder, 32 -> 3 in the decoder) several
times slower per FLOP than the others. A product over a patch matrix is fast, but the matrix of
every frame at once is k*k times the layer's input (1.3-3.4 GB at 1024 frames). Built a few
frames at a time inside a loop (`THIN_CHUNK_ROWS` pixels), it stays in cache, and nothing but
the layer's input is kept for the backward pass. The image layers also take their
stage's pooling (encoder) or upsampling (decoder) inside that loop, so their full-size tensors
never leave the cache. Per layer and per update at 12m, timed in docs/benchmarks.md.

  conv(x, kernel, nearest, pool)  the layer, `nearest` 2x upsampling before it and `pool` 2x2
                           max pooling after it: `few_inputs(_pooled)` or
                           `few_outputs(_upsampled)` when one side has fewer than
                           `THIN_CHANNELS` channels; else `lax_conv`, its kernel gradient by
                           `lax_kernel_grad`, and after `nearest` over the input itself with
                           the `phase_kernel`, its phases put back at their pixels
                           (`pooling.depth_to_space`): 36 / 100 of the multiply-adds.
  phase_kernel(kernel)     `[k, k, C, O]` -> `[k2, k2, C, 4 O]` (k2 = 3 for k = 5): a layer over
                           the 2x upsampled input as one over the input, an output per phase.
  lax_kernel_grad(x, g, k) `d kernel` as one convolution of g by x, laid out so that XLA:CPU
                           transposes g, not a recomputed x.
  kernel_grad(x, g, k)     `d kernel` of a thin layer: x.T @ patches(g) or patches(x).T @ g,
                           whichever patch matrix is narrower (k*k*O or k*k*C columns).
  few_inputs(x, kernel)    y = patches(x) @ kernel; its input gradient is `few_outputs`.
  few_outputs(x, kernel)   y = the window sum of x @ kernel (each input pixel's contribution
                           to its k*k windows, k*k*O columns); both gradients read one patch
                           matrix of g.

`x [N, H, W, C]`, `kernel [k, k, C, O]` (k odd, zero padding (k-1)/2 on every side). Every form
computes the same function as the direct one (`convs.same_conv(..., 'lax')`: upsample, convolve,
pool), whose products `benchmark.direct_form_flops` counts as the network's work; all agree
with `lax.conv_general_dilated` (and autodiff pooling) to float tolerance, gradients included
(tests/test_chunked_conv.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.models import pooling

# Pixels per loop iteration of the thin layers (2 frames at 64x64 for the encoder's image layer:
# 75 columns, 2.5 MB; 8 frames at 32x32 for the decoder's, by phases: 108 columns). Timed
# against 2x and 4x as many over the layers of the 12m CNN, and the decoder's image layer at
# 2048-16384 (docs/benchmarks.md).
THIN_CHUNK_ROWS = 8192

# `conv` runs a layer with fewer inputs or outputs than this as `few_inputs` / `few_outputs`.
THIN_CHANNELS = 8



def lax_conv(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """Stride-1 convolution by `lax.conv_general_dilated` (`[N, H, W, C]`, `[k, k, C, O]`, zero
  padding `pad` on every side), differentiated by autodiff."""
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv(x: jax.Array, kernel: jax.Array, nearest: bool = False,
         pool: bool = False) -> jax.Array:
  """The layer, in the form for its channel counts and height (module docstring); with
  `nearest`, over the input upsampled 2x (nearest neighbour), and with `pool`, followed by 2x2
  max pooling (`pooling.max_pool`). A thin layer takes either inside its loop
  (`few_outputs_upsampled`, `few_inputs_pooled`)."""
  c, o = kernel.shape[2:]
  thin = min(c, o) < THIN_CHANNELS
  if thin and c <= o and pool and not nearest:
    return few_inputs_pooled(x, kernel)
  if thin and c > o and nearest and not pool:
    return few_outputs_upsampled(x, kernel)
  if thin:
    y = pooling.upsample(x) if nearest else x
    y = few_inputs(y, kernel) if c <= o else few_outputs(y, kernel)
  elif nearest:
    y = pooling.depth_to_space(_lax_forward(x, phase_kernel(kernel)), 2)
  else:
    y = _lax_forward(x, kernel)
  return pooling.max_pool(y) if pool else y


def _frames_per_chunk(frames: int, pixels: int, rows: int) -> int:
  """The largest divisor of `frames` with at most `rows` pixels (at least 1)."""
  most = max(1, rows // pixels)
  return max(d for d in range(1, min(most, frames) + 1) if frames % d == 0)


def _chunks(x: jax.Array, rows: int) -> jax.Array:
  """`[N, H, W, C]` -> `[N / F, F, H, W, C]`, F frames of at most `rows` pixels per chunk."""
  frames = _frames_per_chunk(x.shape[0], x.shape[1] * x.shape[2], rows)
  return x.reshape(x.shape[0] // frames, frames, *x.shape[1:])


def _pad(x: jax.Array, k: int) -> jax.Array:
  pad = (k - 1) // 2
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _column_shifts(x: jax.Array, k: int) -> jax.Array:
  """`[F, H, W, C]` -> `[F, H + k - 1, W, k C]`: the zero-padded input's k column shifts side by
  side, so that pixel (i, j)'s window row a is row i + a's `k C` values."""
  w = x.shape[2]
  x = _pad(x, k)
  return jnp.concatenate([x[:, :, b:b + w] for b in range(k)], -1)


def _patches(x: jax.Array, k: int) -> jax.Array:
  """`[F, H, W, C]` -> `[F H W, k k C]`: each pixel's k x k window of the zero-padded input,
  ordered (row offset, column offset, channel) as a `[k, k, C, O]` kernel's rows."""
  f, h, w, c = x.shape
  if c < THIN_CHANNELS:
    # The k column shifts first, then k row shifts of those: pieces of k*c values to copy
    # instead of c (3 for an image), 20-25% less time for a thin layer's forward plus backward
    # pass; for wider inputs the one-step form was as fast or faster (docs/benchmarks.md).
    columns = _column_shifts(x, k)
    views = [columns[:, a:a + h] for a in range(k)]
  else:
    x = _pad(x, k)
    views = [x[:, a:a + h, b:b + w] for a in range(k) for b in range(k)]
  return jnp.concatenate(views, -1).reshape(f * h * w, k * k * c)


def window_sum(z: jax.Array, k: int) -> jax.Array:
  """`[N, H, W, k*k, O]` -> `[N, H-k+1, W-k+1, O]`: output `(i, j)` sums tap `(a, b)` of input
  pixel `(i + a, j + b)`."""
  h, w = z.shape[1:3]
  out_h, out_w = h - k + 1, w - k + 1
  return sum(z[:, a:a + out_h, b:b + out_w, a * k + b] for a in range(k) for b in range(k))


def _window_sum(z: jax.Array, k: int, outputs: int) -> jax.Array:
  """`[F, H, W, k k O]` (pixel (i, j)'s contribution to the output at offset (a, b) of its
  windows) -> `[F, H, W, O]`: `window_sum` over the zero-padded contributions."""
  f, h, w, _ = z.shape
  return window_sum(_pad(z, k).reshape(f, h + k - 1, w + k - 1, k * k, outputs), k)


def _flipped(kernel: jax.Array) -> jax.Array:
  """The kernel of the input gradient: offsets reversed, inputs and outputs swapped."""
  return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


def _patch_matrix(kernel: jax.Array, dtype) -> jax.Array:
  """`[k, k, C, O]` -> `[k k C, O]`, the rows in `_patches`' order: `patches(x) @ it` is the
  layer."""
  k, _, c, o = kernel.shape
  return kernel.reshape(k * k * c, o).astype(dtype)


def _tap_matrix(kernel: jax.Array, dtype) -> jax.Array:
  """`[k, k, C, O]` -> `[C, k k O]`: `_window_sum(x @ it)` is the layer (`few_outputs`)."""
  k, _, c, o = kernel.shape
  return kernel.transpose(2, 0, 1, 3).reshape(c, k * k * o).astype(dtype)


def _products(fn, x: jax.Array, g: jax.Array, shape: tuple, rows: int, *more: jax.Array):
  """`sum over chunks fn(x chunk, g chunk, *more chunks)` in float32, and each chunk's second
  output stacked. Chunks of `x` have at most `rows` pixels; `g` and `more` are split into the
  same frames."""
  frames = _chunks(x, rows).shape[1]

  def step(total, chunk):
    product, out = fn(*chunk)
    return total + product, out

  split = lambda a: a.reshape(a.shape[0] // frames, frames, *a.shape[1:])
  return jax.lax.scan(step, jnp.zeros(shape, jnp.float32), tuple(map(split, (x, g, *more))))


def _dot32(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _from_g_patches(total: jax.Array, k: int) -> jax.Array:
  """`x.T @ patches(g)` `[C, k k O]` -> `[k, k, C, O]`: its tap (a, b) sits at the flipped
  offset (k-1-a, k-1-b), since output (i, j) reads input (i + a - pad, j + b - pad)."""
  c, o = total.shape[0], total.shape[1] // (k * k)
  return total.reshape(c, k, k, o)[:, ::-1, ::-1].transpose(1, 2, 0, 3)


def kernel_grad(x: jax.Array, g: jax.Array, k: int, rows: int | None = None) -> jax.Array:
  """The kernel gradient `[k, k, C, O]` (float32) of the layer with input `x [N, H, W, C]` at
  the output gradient `g [N, H, W, O]`, `rows` pixels (default `THIN_CHUNK_ROWS`, read at the
  call) at a time, from the narrower of the two patch matrices: for a layer with few channels on
  one side."""
  rows = rows or THIN_CHUNK_ROWS
  c, o = x.shape[-1], g.shape[-1]
  if c < o:
    total, _ = _products(lambda x, g: (_dot32(_patches(x, k).T, g.reshape(-1, o)), None),
                         x, g, (k * k * c, o), rows)
    return total.reshape(k, k, c, o)
  total, _ = _products(lambda x, g: (_dot32(x.reshape(-1, c).T, _patches(g, k)), None),
                       x, g, (c, k * k * o), rows)
  return _from_g_patches(total, k)


def lax_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
  """The kernel gradient `[k, k, C, O]` of `lax_conv(x, kernel, (k - 1) // 2)` at the output
  gradient `g`, as one convolution with `g`'s channels as its batch and `x` as its kernel.

  Autodiff convolves `x` with `g` the other way round, and XLA:CPU then lays `x` out as
  `[C, H, W, N]` for Eigen: a transpose with the frames innermost, into which it fuses the
  recomputation of `x` (the norm, activation and upsampling before the layer), 5x slower than
  the plain transpose. Here `x` is laid out as `[H, W, N, C]`, its channels still innermost, and
  the transpose with the frames innermost falls on `g`, which is already in memory. The decoder's
  8x8 and 16x16 stages at 12m (forward and backward over 1024 frames): 0.187 -> 0.167 s and
  0.558 -> 0.492 s; the encoder's the same. At 32x32 it also replaced products over the frames'
  column shifts (docs/benchmarks.md)."""
  pad = (k - 1) // 2
  # out[o, t, u, c] = sum_{n, i, j} g_padded[n, t + i, u + j, o] x[n, i, j, c], which is the
  # kernel's tap (k - 1 - t, k - 1 - u) (output (i, j) reads input (i + a - pad, j + b - pad)).
  out = jax.lax.conv_general_dilated(g, x, (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=('CHWN', 'IHWO', 'NHWC'),
                                     preferred_element_type=jnp.float32)
  return out[:, ::-1, ::-1].transpose(1, 2, 3, 0)


@jax.custom_vjp
def _lax_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return lax_conv(x, kernel, (kernel.shape[0] - 1) // 2)


def _lax_forward_fwd(x, kernel):
  return _lax_forward(x, kernel), (x, kernel)


def _lax_forward_bwd(residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  dx, = jax.vjp(lambda x: lax_conv(x, kernel, (k - 1) // 2), x)[1](g)
  return dx, lax_kernel_grad(x, g.astype(x.dtype), k).astype(kernel.dtype)


_lax_forward.defvjp(_lax_forward_fwd, _lax_forward_bwd)


@jax.custom_vjp
def few_inputs(x: jax.Array, kernel: jax.Array) -> jax.Array:
  k, o = kernel.shape[0], kernel.shape[-1]
  matrix = _patch_matrix(kernel, x.dtype)
  y = jax.lax.map(lambda chunk: _patches(chunk, k) @ matrix, _chunks(x, THIN_CHUNK_ROWS))
  return y.reshape(*x.shape[:3], o)


def _few_inputs_fwd(x, kernel):
  return few_inputs(x, kernel), (x, kernel)


def _few_inputs_bwd(residuals, g):
  x, kernel = residuals
  g = g.astype(x.dtype)
  dkernel = kernel_grad(x, g, kernel.shape[0])
  return few_outputs(g, _flipped(kernel)).astype(x.dtype), dkernel.astype(kernel.dtype)


few_inputs.defvjp(_few_inputs_fwd, _few_inputs_bwd)


@jax.custom_vjp
def few_inputs_pooled(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`pooling.max_pool(few_inputs(x, kernel))`, each chunk pooled as it is computed; the backward
  pass keeps `x` and the uint8 positions of the maxima, and unpools the gradient chunk by chunk
  into the kernel gradient's product."""
  return _few_inputs_pooled_fwd(x, kernel)[0]


def _few_inputs_pooled_fwd(x, kernel):
  k, o = kernel.shape[0], kernel.shape[-1]
  matrix = _patch_matrix(kernel, x.dtype)

  def chunk(frames):
    f, h, w, _ = frames.shape
    return pooling.pool_with_index((_patches(frames, k) @ matrix).reshape(f, h, w, o))

  pooled, index = jax.lax.map(chunk, _chunks(x, THIN_CHUNK_ROWS))
  n, h, w = x.shape[0], x.shape[1] // 2, x.shape[2] // 2
  return pooled.reshape(n, h, w, o), (x, kernel, index.reshape(n, h, w, o))


def _few_inputs_pooled_bwd(residuals, g):
  x, kernel, index = residuals
  k, _, c, o = kernel.shape
  flipped = _tap_matrix(_flipped(kernel), x.dtype)

  def products(x, g, index):
    full = pooling.unpool(g, index)
    # The input gradient is `few_outputs(full, flipped kernel)`, chunk by chunk; an unused one
    # (the image layer's) is dropped by XLA.
    dx = _window_sum(full @ flipped, k, c)
    return _dot32(_patches(x, k).T, full.reshape(-1, o)), dx

  total, dx = _products(products, x, g.astype(x.dtype), (k * k * c, o), THIN_CHUNK_ROWS, index)
  return dx.reshape(x.shape).astype(x.dtype), total.reshape(kernel.shape).astype(kernel.dtype)


few_inputs_pooled.defvjp(_few_inputs_pooled_fwd, _few_inputs_pooled_bwd)


def _phase_taps(k: int) -> np.ndarray:
  """`[2, k2, k]` 0/1: entry (r, t, a) is 1 where tap a of a k-tap kernel, over a 2x
  nearest-upsampled input and at an output of phase r (row 2 u + r), reads the input's row
  u + t - (k2 - 1) / 2. Row 2 u + r + a - p of the upsampled input is row
  u + floor((r + a - p) / 2) of the input (p = (k - 1) / 2), so the k taps fall on the rows
  -ceil(p / 2) to ceil(p / 2): k2 = 3 for k = 3 or 5, centred, so that the small kernel's
  padding is (k2 - 1) / 2 on both sides as for any other."""
  pad = (k - 1) // 2
  low = [[(r + a - pad) // 2 for a in range(k)] for r in (0, 1)]
  first = min(min(row) for row in low)
  size = max(max(row) for row in low) - first + 1
  assert size == 2 * (-first) + 1, (k, first, size)
  taps = np.zeros((2, size, k), np.float32)
  for r in (0, 1):
    for a in range(k):
      taps[r, low[r][a] - first, a] = 1.0
  return taps


def phase_kernel(kernel: jax.Array) -> jax.Array:
  """`[k, k, C, O]` -> `[k2, k2, C, 4 O]`: the layer over the 2x nearest-upsampled input as one
  stride-1 layer over the input itself, whose 4 O outputs are the four output phases (row parity,
  column parity, output channel); `pooling.depth_to_space` puts them at their pixels. A linear
  map of the kernel, differentiated by autodiff (at full precision: on accelerators a float32
  product may otherwise round its operands to bfloat16)."""
  taps = jnp.asarray(_phase_taps(kernel.shape[0]))
  phases = jnp.einsum('rta,svb,abco->tvcrso', taps, taps, kernel,
                      precision=jax.lax.Precision.HIGHEST)
  return phases.reshape(*phases.shape[:3], -1)


def _few_outputs_forward(x: jax.Array, kernel: jax.Array, phases: bool) -> jax.Array:
  """`few_outputs` of `x`; with `phases`, `kernel` is a `phase_kernel` and each chunk's output is
  put back at its pixels inside the loop."""
  k, o = kernel.shape[0], kernel.shape[-1]
  taps = _tap_matrix(kernel, x.dtype)
  grow = (lambda z: pooling.depth_to_space(z, 2)) if phases else (lambda z: z)
  y = jax.lax.map(lambda chunk: grow(_window_sum(chunk @ taps, k, o)),
                  _chunks(x, THIN_CHUNK_ROWS))
  if phases:
    return y.reshape(x.shape[0], 2 * x.shape[1], 2 * x.shape[2], o // 4)
  return y.reshape(*x.shape[:3], o)


def _few_outputs_grads(x: jax.Array, kernel: jax.Array, g: jax.Array, phases: bool):
  """`(d x, d kernel)` of `_few_outputs_forward`. The input gradient is the convolution of g with
  the flipped kernel: one product over g's patch matrix (k k O wide), which the kernel gradient
  reads too; with `phases`, over each chunk of g put back in the phases' order."""
  k, _, c, o = kernel.shape
  flipped = _patch_matrix(_flipped(kernel), x.dtype)

  def both(x, g):
    patches = _patches(pooling.space_to_depth(g, 2) if phases else g, k)
    return _dot32(x.reshape(-1, c).T, patches), (patches @ flipped).reshape(x.shape)

  total, dx = _products(both, x, g.astype(x.dtype), (c, k * k * o), THIN_CHUNK_ROWS)
  return dx.reshape(x.shape), _from_g_patches(total, k).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _few_outputs(x: jax.Array, kernel: jax.Array, phases: bool) -> jax.Array:
  return _few_outputs_forward(x, kernel, phases)


def _few_outputs_fwd(x, kernel, phases):
  return _few_outputs(x, kernel, phases), (x, kernel)


def _few_outputs_bwd(phases, residuals, g):
  x, kernel = residuals
  return _few_outputs_grads(x, kernel, g, phases)


_few_outputs.defvjp(_few_outputs_fwd, _few_outputs_bwd)


def few_outputs(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _few_outputs(x, kernel, False)


def few_outputs_upsampled(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`few_outputs(pooling.upsample(x), kernel)` without the upsampled input: `few_outputs` of
  `x` itself with the `phase_kernel` (a 5x5 kernel becomes 3x3 with 4x the outputs), each chunk
  put back at its pixels inside the loop. Its patch matrices and window sums are 9 / 25 the size
  of those of the upsampled input; 36 / 100 of the multiply-adds."""
  return _few_outputs(x, phase_kernel(kernel), True)
