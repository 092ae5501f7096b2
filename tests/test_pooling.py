"""`pooling.max_pool`: 2x2 max pooling whose gradient goes to each window's first maximum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.models import pooling


def autodiff_pool(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def test_values_positions_and_gradient_by_hand():
  # Two windows: [[1, 5], [3, 4]] (maximum 5 at (0, 1)) and [[2, 2], [2, 0]] (three tied 2s:
  # the first, (0, 0), takes all of the gradient).
  x = jnp.array([[1., 5., 2., 2.], [3., 4., 2., 0.]]).reshape(1, 2, 4, 1)
  pooled, index = pooling.pool_with_index(x)
  np.testing.assert_array_equal(pooled.ravel(), [5., 2.])
  np.testing.assert_array_equal(index.ravel(), [1, 0])
  assert index.dtype == jnp.uint8
  grad = jax.vjp(pooling.max_pool, x)[1](jnp.array([10., 20.]).reshape(1, 1, 2, 1))[0]
  np.testing.assert_array_equal(grad.reshape(2, 4), [[0., 10., 20., 0.], [0., 0., 0., 0.]])


def test_equals_autodiff_pooling_without_ties_under_jit_and_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 4, 5))
  g = jax.random.normal(jax.random.key(1), (3, 2, 3, 2, 5))
  for fn in (autodiff_pool, pooling.max_pool):
    np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(x), jax.vmap(autodiff_pool)(x))
  got = jax.jit(jax.vmap(lambda x, g: jax.vjp(pooling.max_pool, x)[1](g)[0]))(x, g)
  want = jax.vmap(lambda x, g: jax.vjp(autodiff_pool, x)[1](g)[0])(x, g)
  np.testing.assert_array_equal(got, want)


def test_unpool_is_the_transpose_of_gathering_the_maxima():
  x = jax.random.normal(jax.random.key(2), (2, 4, 6, 3))
  g = jax.random.normal(jax.random.key(3), (2, 2, 3, 3))
  _, index = pooling.pool_with_index(x)
  full = pooling.unpool(g, index)
  # Each window holds exactly one nonzero, g, at its maximum.
  np.testing.assert_allclose(autodiff_pool(jnp.where(full != 0, x, -jnp.inf)),
                             pooling.pool_with_index(x)[0])
  np.testing.assert_allclose(full.reshape(2, 2, 2, 3, 2, 3).sum((2, 4)), g, rtol=1e-6)


def test_odd_sizes_are_refused_with_what_to_change():
  with pytest.raises(ValueError, match='even height and width, got 5x4'):
    pooling.max_pool(jnp.zeros((1, 5, 4, 2)))


def test_upsample_and_its_gradient_the_window_sums():
  x = jnp.arange(8.).reshape(1, 2, 2, 2)
  up = pooling.upsample(x)
  np.testing.assert_array_equal(up[0, :, :, 0], [[0, 0, 2, 2], [0, 0, 2, 2],
                                                 [4, 4, 6, 6], [4, 4, 6, 6]])
  g = jax.random.normal(jax.random.key(5), (3, 4, 6, 2))
  got = jax.jit(lambda g: jax.vjp(pooling.upsample, jnp.zeros((3, 2, 3, 2)))[1](g)[0])(g)
  repeat = lambda x: jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)  # noqa: E731
  want = jax.vjp(repeat, jnp.zeros((3, 2, 3, 2)))[1](g)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pooling.sum_pool(g), g.reshape(3, 2, 2, 3, 2, 2).sum((2, 4)),
                             rtol=1e-6)


def test_depth_to_space_puts_each_channel_group_at_its_pixel():
  # Channel (row, column, c) of pixel (i, j) goes to pixel (2 i + row, 2 j + column).
  y = jnp.arange(16.).reshape(1, 1, 2, 8)
  got = pooling.depth_to_space(y, 2)
  np.testing.assert_array_equal(got[0, :, :, 0], [[0, 2, 8, 10], [4, 6, 12, 14]])
  x = jax.random.normal(jax.random.key(6), (2, 6, 4, 3))
  np.testing.assert_array_equal(pooling.depth_to_space(pooling.space_to_depth(x, 2), 2), x)
