"""Op-family profile: own time of nested op events, opcode families from compiled HLO, and one
traced program end to end."""

import jax
import jax.numpy as jnp
import pytest

from dreamerjax.analysis import flops, op_profile


def _event(tid, ts, dur, op):
  return {'ph': 'X', 'tid': tid, 'ts': ts, 'dur': dur, 'name': op, 'args': {'hlo_op': op}}


def test_own_times_subtract_nested_ops_per_thread():
  events = [_event(1, 0, 100, 'while.1'), _event(1, 10, 30, 'dot.2'), _event(1, 50, 20, 'dot.2'),
            _event(2, 5, 40, 'fusion.3'),  # another thread: overlaps in time, not nested
            {'ph': 'X', 'tid': 1, 'ts': 0, 'dur': 500, 'name': 'PjitFunction(f)', 'args': {}}]
  times = op_profile.own_times(events)
  assert times == pytest.approx({'while.1': 50e-6, 'dot.2': 50e-6, 'fusion.3': 40e-6})


def test_wall_times_split_moments_among_the_ops_running_then():
  events = [_event(1, 0, 200, 'while.1'),  # a container: its body's ops carry its time
            _event(1, 0, 100, 'a'), _event(2, 50, 100, 'b'), _event(1, 170, 30, 'c'),
            {'ph': 'X', 'tid': 3, 'ts': 0, 'dur': 500, 'name': 'PjitFunction(f)', 'args': {}}]
  timeline = op_profile.wall_times(events, {'while.1'})
  # a alone 0-50, a and b 50-100 (half each), b alone 100-150, nothing 150-170, c 170-200.
  assert timeline['ops'] == pytest.approx({'a': 75e-6, 'b': 75e-6, 'c': 30e-6})
  assert timeline['untraced_s'] == pytest.approx(20e-6)
  assert timeline['span_s'] == pytest.approx(200e-6)
  assert timeline['concurrency'] == pytest.approx({1: 130e-6, 2: 50e-6})
  assert sum(timeline['ops'].values()) + timeline['untraced_s'] == pytest.approx(200e-6)


def test_hlo_families_of_a_compiled_program():
  def fn(x, w, k):
    y = jnp.tanh(x @ w)
    image = jax.lax.conv_general_dilated(y.reshape(1, 8, 8, 1), k, (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(image) + jnp.max(y)
  args = (jnp.ones((8, 8)), jnp.ones((8, 8)), jnp.ones((3, 3, 1, 2)))
  families = op_profile.hlo_families(jax.jit(fn).lower(*args).compile().as_text())
  found = set(families.values())
  assert {'matrix product', 'convolution'} <= found
  assert found <= set(op_profile.FAMILIES)


def test_profile_traces_a_program(tmp_path):
  fn = lambda x, w: jnp.sum(jnp.tanh(x @ w) @ w)  # noqa: E731
  result = op_profile.profile(fn, jnp.ones((256, 256)), jnp.ones((256, 256)), calls=2,
                              log_dir=str(tmp_path))
  assert result['op_s'] > 0 and result['wall_s'] > 0
  assert sum(result['wall_parts'].values()) > 0 and result['untraced_s'] >= 0
  assert result['families']['matrix product']['seconds'] > 0
  assert abs(sum(f['share'] for f in result['families'].values()) - 1.0) < 1e-6
  assert result['top_ops'][0]['seconds'] >= result['top_ops'][-1]['seconds']


def test_hlo_parts_name_the_innermost_scope_and_the_gradient_pass():
  def loss(w, x):
    with jax.named_scope('encoder'):
      h = jnp.tanh(x @ w)
    with jax.named_scope('decoder'):
      return jnp.sum(jnp.sin(h @ w))

  def step(w, x):
    with jax.named_scope('optimizer'):  # an outer scope: the inner ones win inside the loss
      return w - 0.1 * jax.grad(loss)(w, x)
  hlo = jax.jit(step).lower(jnp.ones((16, 16)), jnp.ones((4, 16))).compile().as_text()
  parts = op_profile.hlo_parts(hlo)
  assert {'encoder', 'decoder', 'decoder (backward)', 'encoder (backward)'} <= set(parts.values())
  assert set(parts.values()) <= {f'{p}{s}' for p in (*op_profile.PARTS, 'unscoped')
                                 for s in ('', ' (backward)')}
  ops = {name: 1.0 for name in parts}
  result = op_profile.summarize(ops, op_profile.hlo_families(hlo), 1.0, parts)
  assert sum(part['seconds'] for part in result['parts'].values()) == pytest.approx(len(parts))
  seconds = [part['seconds'] for part in result['parts'].values()]
  assert seconds == sorted(seconds, reverse=True)
  assert len(result['top_ops']) == min(10, len(ops))
  assert len(op_profile.summarize(ops, {}, 1.0, parts, top=3)['top_ops']) == min(3, len(ops))


def test_the_train_step_is_scoped_by_part():
  from dreamerjax.analysis import benchmark
  agent = benchmark.bench_agent('debug', 'vector')
  state = jax.eval_shape(agent.init, jax.random.key(0))
  data = benchmark.synthetic_batch(benchmark.OBS_SPACES['vector'], 2, 8, 17)
  hlo = jax.jit(agent.train_step).lower(state, data).compile().as_text()
  found = {part.replace(' (backward)', '') for part in op_profile.hlo_parts(hlo).values()}
  assert {'encoder', 'dynamics', 'decoder', 'reward_cont_heads', 'imagine', 'imagined_heads',
          'critic_loss', 'optimizer'} <= found


def test_flops_by_part_counts_loop_steps_and_gradients_by_hand():
  def loss(w, x):
    with jax.named_scope('encoder'):
      h = x @ w                          # 2 x 4 x 16 x 16 = 2048 FLOPs
    with jax.named_scope('imagine'):
      h, _ = jax.lax.scan(lambda c, _: (c @ w, None), h, None, length=3)  # 3 x 2048
    return jnp.sum(h)
  w, x = jnp.ones((16, 16)), jnp.ones((4, 16))
  forward = op_profile.flops_by_part(loss, w, x)
  assert forward == pytest.approx({'encoder': 2048.0, 'imagine': 3 * 2048.0})
  grads = op_profile.flops_by_part(jax.grad(loss), w, x)
  # Backward: per product one input and one weight gradient (the first product's input
  # gradient is dead code: x is not differentiated).
  assert grads['imagine (backward)'] == pytest.approx(3 * 2 * 2048.0)
  assert grads['encoder (backward)'] == pytest.approx(2048.0)
  assert sum(grads.values()) == pytest.approx(flops.matmul_flops(jax.grad(loss), w, x))
