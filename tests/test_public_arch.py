"""`model.arch=public2024`: the networks of the 2024 public DreamerV3 code, parameter for parameter;
and the FLOP counter both sides of the comparison with that code use."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.analysis import benchmark, flops
from dreamerjax.models import chunked_conv, convs, nets
from dreamerjax.run import configs, validation

# Trained parameters per part of the public code (github.com/danijar/dreamerv3 at e3f0224,
# batch 16 x 64, 17 discrete actions, 64x64x3 image or 17-dim vector observations), measured in
# its own environment by
#   python scripts/bench_public.py --sizes=1m,12m --obs=image,vector
# (`params_by_part` of the `public` records in benchmarks/public_2024.json).
PUBLIC_PARAMS = {
    ('1m', 'image'): dict(encoder=14304, dynamics=377408, decoder=80595, reward=57663,
                          cont=41153, actor=50641, critic=66111),
    ('1m', 'vector'): dict(encoder=9664, dynamics=365120, decoder=50641, reward=57663,
                           cont=41153, actor=50641, critic=66111),
    # benchmarks/public_2024_12m.json
    ('12m', 'image'): dict(encoder=220416, dynamics=5982464, decoder=1272003, reward=721407,
                           cont=656129, actor=792337, critic=853503),
    ('12m', 'vector'): dict(encoder=136960, dynamics=5785856, decoder=792337, reward=721407,
                            cont=656129, actor=792337, critic=853503),
}


@pytest.mark.parametrize('size,obs', sorted(PUBLIC_PARAMS))
def test_public2024_parameters_match_the_public_code_per_part(size, obs):
  agent = benchmark.bench_agent(size, obs, model={'arch': 'public2024'})
  counts = benchmark.params_by_part(agent, jax.eval_shape(agent.init, jax.random.key(0)))
  for part, want in PUBLIC_PARAMS[size, obs].items():
    got = counts['continue' if part == 'cont' else part]
    assert abs(got / want - 1) <= 0.01, (part, got, want)


def test_arch_fills_norm_kernel_and_prior_layers_unless_set():
  config = configs.base()
  assert (lambda m: (m.norm, m.kernel, m.prior_layers))(configs.resolve(config).model) == (
      'layer', 4, 1)
  config.model.arch = 'public2024'
  model = configs.resolve(config).model
  assert (model.norm, model.kernel, model.prior_layers) == ('rms', 5, 2)
  config.model.norm = 'layer'
  assert configs.resolve(config).model.norm == 'layer'


def test_public2024_needs_rssm_dynamics():
  config = configs.base()
  config.variant, config.model.arch = 'storm', 'public2024'
  with pytest.raises(configs.ConfigError, match='arch=public2024 needs'):
    validation.validate(configs.resolve(config))


def test_pool_encoder_and_decoder_shapes():
  image = jnp.zeros((2, 3, 16, 16, 3), jnp.uint8)
  encoder = nets.ImageEncoder(4, kernel=5, pool=True, bias=True, norm='rms')
  params = encoder.init(jax.random.key(0), image)
  assert encoder.apply(params, image).shape == (2, 3, 1 * 1 * 16)
  decoder = nets.ImageDecoder((16, 16, 3), 4, pool=True, bias=True, norm='rms', blocks=8,
                              deter=16, units=8)
  features = jnp.ones((2, 3, 16 + 12))
  params = decoder.init(jax.random.key(1), features)
  out = decoder.apply(params, features)
  assert out.shape == (2, 3, 16, 16, 3) and float(out.min()) > 0 and float(out.max()) < 1


@pytest.mark.parametrize('impl', ['chunked', 'lax', 'shift', 'rows', 'patch'])
@pytest.mark.parametrize('channels,outputs', [(8, 3), (3, 8), (6, 6), (8, 9), (9, 8)])
def test_same_conv_forms_equal_lax_conv_with_gradients(impl, channels, outputs):
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, channels))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, channels, outputs))
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: convs.same_conv(x, k, impl)  # noqa: E731
  np.testing.assert_allclose(ours(x, kernel), conv(x, kernel), atol=1e-4)
  loss = lambda fn: lambda x, k: jnp.sum(jnp.sin(fn(x, k)))  # noqa: E731
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                       jax.grad(loss(conv), (0, 1))(x, kernel), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize('impl', ['chunked', 'lax', 'shift', 'rows', 'patch'])
@pytest.mark.parametrize('nearest,pool,channels,outputs', [(True, False, 8, 3),
                                                           (False, True, 3, 8),
                                                           (True, True, 8, 9)])
def test_same_conv_forms_upsample_and_pool(impl, nearest, pool, channels, outputs):
  """The decoder's stages (2x nearest upsampling, then the convolution) and the encoder's (the
  convolution, then a 2x2 max pool) in every form, against `lax.conv` and autodiff pooling."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, channels))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, channels, outputs))

  def reference(x, k):
    if nearest:
      x = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    n, h, w, c = y.shape
    return y.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4)) if pool else y

  ours = lambda x, k: convs.same_conv(x, k, impl, nearest, pool)  # noqa: E731
  np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), atol=1e-4)
  loss = lambda fn: lambda x, k: jnp.sum(jnp.sin(fn(x, k)))  # noqa: E731
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                       jax.grad(loss(reference), (0, 1))(x, kernel), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_only_odd_same_convolutions_take_the_same_conv_path():
  """`public2024`'s 5x5 convolutions run as `convs.SAME_CONV`; the `paper` forms (stride-2 4x4,
  the upsampling 2x2) keep their patch products, so their programs are unchanged."""
  def primitives(fn, *shapes):
    jaxpr = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(fn(*a)), tuple(range(len(shapes)))))(
        *[jnp.ones(shape) for shape in shapes])
    return {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}
  assert 'conv_general_dilated' in primitives(
      lambda x, k: convs.patch_conv(x, k, 1, 2), (2, 8, 8, 8), (5, 5, 8, 9))
  assert 'conv_general_dilated' not in primitives(
      lambda x, k: convs.patch_conv(x, k, 2, 1), (2, 8, 8, 4), (4, 4, 4, 6))
  assert 'conv_general_dilated' not in primitives(convs.upsample_conv, (2, 4, 4, 8), (2, 2, 8, 24))


def test_counted_flops_include_convolutions_and_skip_dead_code():
  x, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((5, 5, 3, 4))

  def f(x, kernel):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    unused = x.reshape(2, -1) @ jnp.ones((192, 1000))  # noqa: F841 (dead: no output uses it)
    return y
  assert flops.matmul_flops(f, x, kernel) == 2 * (2 * 8 * 8 * 4) * (5 * 5 * 3)


def test_work_flops_count_the_direct_form_and_the_public_codes_repeated_policy_pass(
    monkeypatch):
  # Ours: the chunked form runs an upsampled layer with 3 outputs (the decoder's image layer) at
  # its input's resolution, a 3x3 kernel with 4 x 3 outputs (`phase_kernel`), 2 x (2 x 4 x 4) x
  # 8 x (3 x 3 x 12); its work counts the direct form, 2 x (2 x 8 x 8 x 3) x (5 x 5 x 8).
  monkeypatch.setattr(convs, 'SAME_CONV', 'chunked')
  layer = lambda x, k: convs.same_conv(x, k, convs.SAME_CONV, nearest=True)  # noqa: E731
  x, kernel = jnp.ones((2, 4, 4, 8)), jnp.ones((5, 5, 8, 3))
  phases = flops.matmul_flops(chunked_conv.phase_kernel, kernel)
  assert flops.matmul_flops(layer, x, kernel) == 55_296 + phases
  assert benchmark.direct_form_flops(layer, x, kernel) == 153_600  # the same function object
  assert convs.SAME_CONV == 'chunked'
  # The public code's actor loss runs the policy again over the states its imagination loop ran
  # it on; by scope, its forward pass is the repeat and its gradient is not.
  from dreamerjax.analysis import public_driver
  counts = {'opt/jvp(dyn)/scan/dyn/pol/mlp/linear0': 20.0, 'opt/jvp(pol)/mlp/linear0': 23.0,
            'opt/jvp(pol)/head/action/action/logits': 1.0, 'opt/jvp(val)/mlp/linear0': 23.0,
            'opt/transpose(opt)/jvp(pol)/mlp/linear0': 21.0}
  assert public_driver.repeated_policy_flops(counts) == 24.0
  del counts['opt/jvp(dyn)/scan/dyn/pol/mlp/linear0']  # no policy in the loop: no repeat
  assert public_driver.repeated_policy_flops(counts) == 0.0


def test_conv_layers_and_their_timings_at_a_tiny_width():
  from dreamerjax.analysis import conv_timing
  shapes = conv_timing.conv_shapes(1)
  assert [(s['part'], s['size'], s['inputs'], s['outputs']) for s in shapes] == [
      ('encoder', 64, 3, 2), ('encoder', 32, 2, 3), ('encoder', 16, 3, 4), ('encoder', 8, 4, 4),
      ('decoder', 8, 4, 4), ('decoder', 16, 4, 3), ('decoder', 32, 3, 2), ('decoder', 64, 2, 3)]
  argnums = [arrays[-1] for arrays in conv_timing.layer_arrays(1, frames=2, kernel=5)]
  assert argnums == [(1,)] + [(0, 1)] * 7  # the image layer's input needs no gradient
  result = conv_timing.time_layers(depth=1, frames=2, repeats=1)
  assert result['jax'] == jax.__version__ and len(result['layers']) == 8
  assert all(r['forward_s'] > 0 and r['gradient_s'] > 0 for r in result['layers'])
  records = benchmark.conv_profile(1, frames=2, impls=('lax', 'rows'), repeats=1)
  assert all(set(r['min_s']) == {'lax', 'rows'} and r['counted_flops'] > 0 for r in records)


def test_a_pause_before_each_timed_call_is_slept_and_not_timed():
  """`pause_s` sleeps before every timed call, outside its timing (to see how the host treats
  memory freed that long before a call)."""
  import time
  step = jax.jit(lambda state, data: (state + data, jnp.sum(state)), donate_argnums=0)
  start = time.perf_counter()
  timing = benchmark._compile_and_time(step, jnp.zeros(4), jnp.ones(4), repeats=2, pause_s=0.3)
  assert time.perf_counter() - start >= 0.6
  assert len(timing.calls) == 2 and all(seconds < 0.3 for seconds in timing.calls)


def test_side_record_times_a_fresh_trace_and_summarize_carries_it():
  from dreamerjax.analysis import public_harness
  record = benchmark.side_record('debug', 'vector', batch=2, length=8, actions=3, repeats=1)
  # Compile seconds hold the trace and lowering (lower_s) and XLA's compile; the FLOP count
  # comes after, so it cannot have left a trace for the timed lowering to reuse.
  assert 0 < record['lower_s'] < record['compile_s']
  assert record['counted_flops'] > 0 and len(record['step_s_calls']) == 1
  # The kernel's share of each call (system CPU seconds, all threads): at most all cores' worth.
  assert len(record['step_sys_s_calls']) == 1
  assert 0 <= record['step_sys_s_calls'][0] <= os.cpu_count() * record['step_s_calls'][0] + 0.05
  assert record['params_by_part']['total'] == sum(
      count for part, count in record['params_by_part'].items() if part != 'total')
  records = [{**record, 'config': config, 'round': 0} for config in ('public', 'public2024')]
  row = public_harness.summarize(records)['rows'][0]
  assert row['sides']['public2024']['lower_s'] == record['lower_s']
  assert row['sides']['public2024']['step_sys_s_median'] == record['step_sys_s_calls'][0]
  assert row['equal_architecture']['compile_ratio'] == 1.0
  # Work FLOPs decide equal work: no convolution here, so they are the counted FLOPs; a public
  # side with 10% more work (its counted FLOPs unchanged) is not equal work.
  assert record['work_flops'] == record['counted_flops']
  assert row['equal_architecture']['work_flops_ratio'] == 1.0
  assert row['equal_architecture']['equal_work']
  records[0] = {**records[0], 'work_flops': 1.1 * record['work_flops']}
  pair = public_harness.summarize(records)['rows'][0]['equal_architecture']
  assert pair['counted_flops_ratio'] == 1.0 and not pair['equal_work']
  # The scratch buffer a call allocates: more than the batch's 2 x 8 vectors of 17 floats, less
  # than a gigabyte at this size; both sides are the same record here, so the ratio is 1.
  assert 2 * 8 * 17 * 4 < record['scratch_bytes'] < 1e9
  assert row['equal_architecture']['scratch_ratio'] == 1.0


def test_the_public_side_gets_only_flags_its_older_jax_accepts():
  """The public code's jax 0.4.33 aborts on a flag it does not know (YNNPACK's); the others
  pass through."""
  from dreamerjax.analysis import public_harness
  ours = os.environ['XLA_FLAGS']
  assert '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution' in ours.split()
  flags = ('--xla_cpu_enable_concurrency_optimized_scheduler=false '
           '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution '
           '--xla_force_host_platform_device_count=2')
  assert public_harness.older_jax_flags(flags) == (
      '--xla_cpu_enable_concurrency_optimized_scheduler=false '
      '--xla_force_host_platform_device_count=2')
