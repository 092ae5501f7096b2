"""Matrix products with their gradients written out for XLA:CPU: `rows_matmul` (`x @ w` over
all rows at once, the product of `nets.Dense` and of the convolutions' patch matrices),
`weight_grad` (`x.T @ g` in the faster of two layouts) and `linear_grads` (both gradients of
`x @ w`, also used by `deferred_grads` after its loop).
"""

from __future__ import annotations

import jax


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
