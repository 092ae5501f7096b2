"""`chunked_conv`: stride-1 'SAME' convolutions whose kernel gradient (and, with few channels on
one side, the whole layer) runs over patch matrices a few frames at a time, against
`lax.conv_general_dilated` with gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.models import chunked_conv, convs


def lax_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def values_and_grads(conv, x, kernel, g):
  y, vjp = jax.vjp(conv, x, kernel)
  return (y, *vjp(g))


def random_layer(frames, channels, outputs, k, height=6):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (frames, height, 5, channels)),
          jax.random.normal(keys[1], (k, k, channels, outputs)) / k,
          jax.random.normal(keys[2], (frames, height, 5, outputs)))


@pytest.mark.parametrize('form', ['few_inputs', 'few_outputs', 'conv'])
@pytest.mark.parametrize('frames,channels,outputs,k', [(6, 3, 8, 5), (3, 8, 3, 5), (1, 2, 5, 3),
                                                       (5, 4, 4, 1), (4, 9, 12, 3),
                                                       (4, 12, 9, 5)])
def test_forms_equal_lax_conv_with_gradients(monkeypatch, form, frames, channels, outputs, k):
  # 2 frames of 6x5 pixels a chunk: several loop iterations, and odd frame counts (one a chunk).
  monkeypatch.setattr(chunked_conv, 'THIN_CHUNK_ROWS', 60)
  x, kernel, g = random_layer(frames, channels, outputs, k)
  got = values_and_grads(getattr(chunked_conv, form), x, kernel, g)
  want = values_and_grads(lax_conv, x, kernel, g)
  for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('channels,outputs', [(3, 8), (8, 3)])
def test_kernel_grad_from_either_patch_matrix(channels, outputs):
  """`kernel_grad` reads the patches of x (fewer inputs) or of g (fewer outputs)."""
  x, kernel, g = random_layer(4, channels, outputs, 5)
  want = jax.vjp(lambda k: lax_conv(x, k), kernel)[1](g)[0]
  np.testing.assert_allclose(chunked_conv.kernel_grad(x, g, 5, rows=30), want, atol=5e-5,
                             rtol=1e-5)


@pytest.mark.parametrize('frames,channels,outputs,k', [(3, 8, 9, 5), (2, 9, 8, 3), (4, 8, 8, 1)])
def test_lax_kernel_grad_equals_autodiff(frames, channels, outputs, k):
  """Wide layers take the kernel gradient as a convolution of g by x (`lax_kernel_grad`); frames
  of 6x5 pixels, so that a swap of the two axes or a tap read at the unflipped offset shows."""
  x, kernel, g = random_layer(frames, channels, outputs, k)
  want = values_and_grads(lax_conv, x, kernel, g)
  np.testing.assert_allclose(chunked_conv.lax_kernel_grad(x, g, k), want[2], atol=5e-5, rtol=1e-5)
  got = values_and_grads(chunked_conv.conv, x, kernel, g)
  for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5, err_msg=name)
  bf16 = chunked_conv.lax_kernel_grad(x.astype(jnp.bfloat16), g.astype(jnp.bfloat16), k)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, want[2], rtol=0.05, atol=0.5)


def test_a_tap_lands_where_lax_puts_it():
  """One input pixel and one kernel tap, by hand: through tap (a, b) of a 3x3 kernel, output
  (i, j) reads input (i + a - 1, j + b - 1)."""
  x = jnp.zeros((1, 4, 4, 1)).at[0, 2, 2, 0].set(1.0)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 1, 0, 0].set(2.0)
  want = np.zeros((1, 4, 4, 1))
  want[0, 3, 2, 0] = 2.0  # output (3, 2) reads input (3 + 0 - 1, 2 + 1 - 1) = (2, 2)
  for form in (chunked_conv.few_inputs, chunked_conv.few_outputs):
    np.testing.assert_array_equal(form(x, kernel), want)
  # And back: a gradient at output (3, 2) reaches tap (0, 1) through input (2, 2), times 1.
  dkernel = chunked_conv.kernel_grad(x, jnp.zeros((1, 4, 4, 1)).at[0, 3, 2, 0].set(1.0), 3)
  np.testing.assert_array_equal(dkernel, np.asarray(kernel > 0, np.float32))


def test_chunks_divide_the_frames():
  chunk = lambda frames, pixels: chunked_conv._frames_per_chunk(frames, pixels, 16384)  # noqa: E731
  assert chunk(1024, 64 * 64) == 4
  assert chunk(1024, 32 * 32) == 16
  assert chunk(17, 64 * 64) == 1       # prime: one frame a chunk
  assert chunk(6, 64 * 64) == 3
  assert chunk(3, 256 * 256) == 1      # a frame larger than a chunk


def test_bfloat16_follows_the_input_dtype_and_keeps_a_float32_kernel_gradient():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)).astype(jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 3, 8)) / 5
  y, vjp = jax.vjp(chunked_conv.few_inputs, x, kernel)
  dx, dkernel = vjp(jnp.ones_like(y))
  assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32
  want = jax.grad(lambda k: jnp.sum(lax_conv(x.astype(jnp.float32), k)))(kernel)
  np.testing.assert_allclose(dkernel, want, rtol=0.05, atol=0.5)


def test_default_same_conv_runs_thin_layers_without_lax_conv():
  assert convs.SAME_CONV == 'auto' and convs.same_conv_form() == 'chunked'  # one CPU device

  def primitives(c, o):
    fn = lambda x, k: jnp.sum(convs.same_conv(x, k, convs.SAME_CONV))  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1)))(jnp.ones((2, 8, 8, c)), jnp.ones((5, 5, c, o)))
    return {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}
  assert 'conv_general_dilated' not in primitives(3, 32)
  assert 'conv_general_dilated' not in primitives(32, 3)
  assert 'conv_general_dilated' in primitives(8, 8)


def test_sharded_batch_takes_the_form_without_a_frame_loop(run_with_devices):
  """Over 8 devices `auto` is `lax`, whose gradient keeps the frames where they are: `chunked`
  would gather every frame onto every device (its loop runs over the frames)."""
  out = run_with_devices("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from dreamerjax.models import convs
      mesh = Mesh(np.array(jax.devices()), ('data',))
      # A thin layer, 64 frames of 32x32: 8 chunks of 8192 pixels, so the loop runs over the
      # frames.
      x = jax.device_put(jnp.ones((64, 32, 32, 3)), NamedSharding(mesh, P('data')))
      kernel = jnp.ones((5, 5, 3, 9)) / 100
      def gathers(impl):
        grad = jax.jit(jax.grad(lambda x, k: jnp.sum(convs.same_conv(x, k, impl) ** 2), (0, 1)))
        return grad.lower(x, kernel).compile().as_text().count('all-gather(')
      print(convs.same_conv_form(), gathers('auto'), gathers('chunked'))
  """)
  form, auto, chunked = out.split()
  assert form == 'lax' and int(auto) == 0 and int(chunked) > 0


def test_vmapped_over_seeds_equals_each_seed_alone(monkeypatch):
  """`num_seeds` vmaps the whole update: the chunk loops batch over the seed axis."""
  monkeypatch.setattr(chunked_conv, 'THIN_CHUNK_ROWS', 60)
  x, kernel, g = random_layer(4, 3, 9, 5)
  xs, kernels, gs = (jnp.stack([a, 2.0 * a]) for a in (x, kernel, g))
  for conv in (chunked_conv.conv, chunked_conv.few_outputs):
    got = jax.vmap(functools.partial(values_and_grads, conv))(xs, kernels, gs)
    for seed in range(2):
      want = values_and_grads(lax_conv, xs[seed], kernels[seed], gs[seed])
      for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a[seed], b, atol=2e-4, rtol=1e-5)
  # The image layers with their stage: the encoder's pool, the decoder's upsampling.
  stages = [(chunked_conv.few_inputs_pooled, lambda x, k: max_pool(lax_conv(x, k)), (3, 9)),
            (chunked_conv.few_outputs_upsampled, lambda x, k: lax_conv(upsample(x), k), (9, 3))]
  for ours, reference, (channels, outputs) in stages:
    _, kernel, _ = random_layer(4, channels, outputs, 5)
    x = jax.random.normal(jax.random.key(6), (4, 6, 4, channels))  # even sizes for the pool
    xs, kernels = jnp.stack([x, 2.0 * x]), jnp.stack([kernel, -kernel])
    gs = jax.random.normal(jax.random.key(7), jax.vmap(reference)(xs, kernels).shape)
    got = jax.vmap(functools.partial(values_and_grads, ours))(xs, kernels, gs)
    for seed in range(2):
      want = values_and_grads(reference, xs[seed], kernels[seed], gs[seed])
      for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a[seed], b, atol=2e-4, rtol=1e-5)


def test_phase_taps_by_hand():
  """5 taps over the 2x upsampled input, pad 2: for even output rows 2u, upsampled rows 2u - 2 ..
  2u + 2 are input rows u - 1, u - 1, u, u, u + 1; for odd rows 2u + 1, u - 1, u, u, u + 1,
  u + 1."""
  taps = chunked_conv._phase_taps(5)
  np.testing.assert_array_equal(taps[0], [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(taps[1], [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]])
  assert chunked_conv._phase_taps(1).shape == (2, 1, 1)
  assert chunked_conv._phase_taps(7).shape == (2, 5, 7)


@pytest.mark.parametrize('k', [1, 3, 7])
def test_upsampled_layer_by_phases_at_other_kernel_sizes(monkeypatch, k):
  monkeypatch.setattr(chunked_conv, 'THIN_CHUNK_ROWS', 60)
  keys = jax.random.split(jax.random.key(k), 3)
  x = jax.random.normal(keys[0], (3, 6, 5, 9))
  kernel = jax.random.normal(keys[1], (k, k, 9, 3)) / k
  g = jax.random.normal(keys[2], (3, 12, 10, 3))
  got = values_and_grads(chunked_conv.few_outputs_upsampled, x, kernel, g)
  want = values_and_grads(lambda x, k: lax_conv(upsample(x), k), x, kernel, g)
  for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5, err_msg=name)


def upsample(x):
  return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)


def max_pool(y):
  n, h, w, c = y.shape
  return y.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


@pytest.mark.parametrize('nearest,pool,channels,outputs', [
    (False, True, 3, 8),   # few_inputs_pooled: the encoder's image layer
    (True, False, 8, 3),   # few_outputs_upsampled: the decoder's image layer
    (False, True, 8, 9), (True, False, 9, 8),  # wide layers: lax_conv between the two
    (True, True, 3, 8), (True, True, 8, 3)])  # both: upsampled and pooled around the thin forms
def test_upsampled_and_pooled_layers_equal_lax_conv_with_gradients(monkeypatch, nearest, pool,
                                                                   channels, outputs):
  # 60 pixels a chunk: 2 frames at 6x5 (1 at 12x10), several loop iterations, 5 frames in all.
  monkeypatch.setattr(chunked_conv, 'THIN_CHUNK_ROWS', 60)
  keys = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(keys[0], (5, 6, 10, channels))
  kernel = jax.random.normal(keys[1], (5, 5, channels, outputs)) / 5
  scale = 2 if nearest else 1

  def reference(x, kernel):
    y = lax_conv(upsample(x) if nearest else x, kernel)
    return max_pool(y) if pool else y

  want_shape = (5, 6 * scale // (2 if pool else 1), 10 * scale // (2 if pool else 1), outputs)
  g = jax.random.normal(keys[2], want_shape)
  got = values_and_grads(functools.partial(chunked_conv.conv, nearest=nearest, pool=pool),
                         x, kernel, g)
  want = values_and_grads(reference, x, kernel, g)
  assert got[0].shape == want_shape
  for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5, err_msg=name)


def test_the_thin_stages_keep_no_full_size_tensor():
  """The encoder's image layer with its pool, and the decoder's with its upsampling, keep only
  their inputs (and uint8 positions of the maxima) for the backward pass: no `[N, 64, 64, 32]`
  array lives between the two passes."""
  x = jnp.zeros((4, 64, 64, 3))
  kernel = jnp.zeros((5, 5, 3, 32))
  residuals = jax.vjp(functools.partial(chunked_conv.conv, pool=True), x, kernel)[1]
  shapes = {(leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(residuals)}
  assert ((4, 64, 64, 32), 'float32') not in shapes
  assert ((4, 32, 32, 32), 'uint8') in shapes
  low = jnp.zeros((4, 32, 32, 32))
  residuals = jax.vjp(functools.partial(chunked_conv.conv, nearest=True), low,
                      jnp.zeros((5, 5, 32, 3)))[1]
  assert max(leaf.size for leaf in jax.tree.leaves(residuals)) == low.size
