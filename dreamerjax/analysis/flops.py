"""FLOPs of a JAX function read off its jaxpr, with every loop step counted.

Imports only jax and numpy: the side-by-side benchmark against the public DreamerV3 code loads
this file by path in that code's own virtual environment (an older jax), so both sides count
with the same rules.
"""

from __future__ import annotations

import jax
import jax.extend.core  # noqa: F401 (jax 0.4 does not import it with jax)
import numpy as np


def matmul_flops(fn, *args) -> float:
  """FLOPs (2 per multiply-add) of the matrix products and convolutions in `fn(*args)`, read off
  its jaxpr with each `scan` body counted once per iteration (a `cond` counts its most expensive
  branch, a `while` of unknown trip count its body once).

  XLA's `cost_analysis` counts the body of a loop once: for a train step it sees one of the 15
  imagination steps and one of the 64 observation steps, so its figure undercounts the step.
  Elementwise work is not included here; matrix products and convolutions are nearly all of the
  arithmetic.
  """
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return jaxpr_flops(_dead_code_removed(jaxpr))


def flops_by_scope(fn, *args) -> dict[str, float]:
  """`matmul_flops` of `fn(*args)` split by the name stack of each product (`jaxpr_flops`)."""
  counts: dict[str, float] = {}
  jaxpr_flops(_dead_code_removed(jax.make_jaxpr(fn)(*args).jaxpr), counts)
  return counts


def _dead_code_removed(jaxpr):
  """The jaxpr without the equations no output depends on (inside loops too), as XLA removes
  them: autodiff leaves, for one, the tangents of a rollout whose result is stop-gradiented."""
  from jax._src.interpreters import partial_eval

  return partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def _conv_flops(eqn) -> float:
  """2 x output elements x (kernel taps x input channels per group)."""
  rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial...)
  kernel = eqn.invars[1].aval.shape
  taps = float(np.prod([kernel[d] for d in rhs_spec[2:]]))
  return 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * taps * kernel[rhs_spec[1]]


def jaxpr_flops(jaxpr, counts: dict | None = None, stack: str = '', scale: float = 1.0) -> float:
  """FLOPs of a jaxpr's products (see `matmul_flops`). With `counts` (a dict), also adds each
  product's FLOPs (times its loops' trip counts) to `counts[name stack]`, the `/`-joined
  `jax.named_scope` path of the product, loops included."""
  closed, open_ = jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    here = stack
    if counts is not None:
      here = '/'.join(p for p in (stack, str(eqn.source_info.name_stack)) if p)
    if name in ('dot_general', 'conv_general_dilated'):
      if name == 'dot_general':
        (lhs_contract, _), _ = eqn.params['dimension_numbers']
        lhs_shape = eqn.invars[0].aval.shape
        contracted = float(np.prod([lhs_shape[d] for d in lhs_contract]))
        flops = 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * contracted
      else:
        flops = _conv_flops(eqn)
      total += flops
      if counts is not None:
        counts[here] = counts.get(here, 0.0) + flops * scale
      continue
    inner = []
    for value in eqn.params.values():
      for item in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(item, closed):
          inner.append(item.jaxpr)
        elif isinstance(item, open_):
          inner.append(item)
    if name == 'cond':  # the most expensive branch; only it is counted by name
      sizes = [jaxpr_flops(sub) for sub in inner]
      if inner and counts is not None:
        jaxpr_flops(inner[int(np.argmax(sizes))], counts, here, scale)
      total += max(sizes, default=0.0)
    else:
      length = eqn.params['length'] if name == 'scan' else 1
      total += length * sum(jaxpr_flops(sub, counts, here, scale * length) for sub in inner)
  return total


def matmul_peak(size: int = 2048, repeats: int = 10) -> dict:
  """The best f32 FLOP/s of a jitted `size x size` matrix product over `repeats` calls (after a
  warm-up call): the machine's practical matmul peak under this jax."""
  import time

  rng = np.random.default_rng(0)
  a, b = (jax.device_put(rng.normal(size=(size, size)).astype(np.float32)) for _ in range(2))
  product = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(product(a, b))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(product(a, b))
    seconds.append(time.perf_counter() - start)
  flops = 2.0 * size ** 3
  return {'size': size, 'repeats': repeats, 'best_s': min(seconds),
          'median_s': float(np.median(seconds)), 'flops_per_s': flops / min(seconds),
          'jax': jax.__version__}
