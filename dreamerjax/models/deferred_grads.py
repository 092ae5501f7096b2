"""Linear layers' weight gradients computed after a loop instead of inside it: a scan over a Flax
step (`scan`), and a network recorded inside a loop that is not differentiated and replayed after
it (`record`, `replay`, at the end of this module).

Differentiating `lax.scan` adds every step's weight gradient into one accumulator inside the
backward loop: at the RSSM's observation scan (16 rows a step, 64 steps) that is 64 skinny
products and 64 additions of every weight matrix (5.1M weights at 12m), the slowest kind of work
for a CPU or an accelerator. `scan` gives the same gradient with the weight gradients taken out of
the loop: the backward loop computes only the gradients of the activations, and each linear
layer's weight gradient is one product over all `T x B` rows afterwards.

How: a linear layer (`nn.Dense`, `nets.BlockLinear`) is linear in its parameters, so the sum over
steps of its parameter gradients is the gradient of the same layer applied to the stacked inputs
of every step, taken at the stacked gradients of its outputs. The forward loop records each
layer's inputs (a Flax method interceptor) and adds a zero to each layer's output whose gradient
the backward loop returns per step (the gradient of that output); the layer's parameters enter the
loop as constants. After the loop, `jax.vjp` of the layer's own `apply`, `vmap`ped over the steps,
turns the stacked inputs and output gradients into its parameter gradients: every row in one
product. Other parameters (norm scales) keep their per-step accumulation.

The backward loop's products by those constant weights (each layer's input gradient) read the
weights transposed; XLA:CPU's products are slower that way, the more so with few rows. Each
layer's kernel is transposed once before the loop (`_transposed`) and its input gradient is taken
from that copy (`_fixed_linear`): the 12m world-model gradient (vector) in 503 ms instead of
580 (docs/benchmarks.md).

  scan(step, params, carry, xs) == lax.scan(lambda c, x: step(params, c, x), carry, xs)

`step(params, carry, x) -> (carry, y)` applies Flax modules with `params` (a variables dict,
`{'params': ...}`) any number of times, but calls each linear layer at most once per step.
`tests/test_deferred_grads.py` checks the values and gradients against plain `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from dreamerjax.models import nets, products

LINEAR = (nn.Dense, nets.BlockLinear)


@dataclasses.dataclass
class _Layer:
  """One linear layer's call in a step: an unbound copy of the module and how its arguments are
  put back together from the arrays among them (`treedef` over args and kwargs, the others kept)."""
  module: nn.Module
  treedef: Any
  statics: dict[int, Any]     # leaf index -> a leaf that is not an array (e.g. `blocks_major`)
  output: jax.ShapeDtypeStruct
  inputs: list[jax.ShapeDtypeStruct]

  def arguments(self, arrays) -> tuple[tuple, dict]:
    arrays = iter(arrays)
    leaves = [self.statics[i] if i in self.statics else next(arrays)
              for i in range(self.treedef.num_leaves)]
    return jax.tree.unflatten(self.treedef, leaves)

  def call(self, params, arrays):
    args, kwargs = self.arguments(arrays)
    return self.module.apply({'params': params}, *args, **kwargs)


@jax.tree_util.register_static
@dataclasses.dataclass(eq=False)
class _Static:
  """Python values (the layers' descriptions) carried as residuals without being arrays."""
  value: Any


class _Taps:
  """Method interceptor: records each linear layer's array arguments (`inputs[path]`), adds
  `zeros[path]` to its output when given, and describes the layers it met (`layers[path]`).
  Only layers whose parameters are among `params` (the very arrays `scan` was given) are
  tapped; a module applied with other parameters inside the step runs as it is."""

  def __init__(self, params: dict, zeros: dict | None = None, fixed: dict | None = None):
    self.zeros, self.inputs, self.layers = zeros, {}, {}
    self.fixed = fixed or {}  # path -> (layer, its `_transposed` kernels): see `_fixed_linear`
    self.owned = {id(leaf) for leaf in jax.tree.leaves(params)}

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, LINEAR):
      return next_fun(*args, **kwargs)
    own = jax.tree.leaves(module.variables.get('params', {}))
    if not own or any(id(leaf) not in self.owned for leaf in own):
      return next_fun(*args, **kwargs)
    path = module.path
    if path in self.inputs:
      raise ValueError(f'deferred_grads.scan: the linear layer {"/".join(path)} is called more '
                       'than once in a step; call each layer once or use lax.scan')
    leaves, treedef = jax.tree.flatten((args, kwargs))
    self.inputs[path] = [leaf for leaf in leaves if isinstance(leaf, jax.Array)]
    statics = {i: leaf for i, leaf in enumerate(leaves) if not isinstance(leaf, jax.Array)}
    if path in self.fixed:
      layer, transposed = self.fixed[path]
      out = _fixed_linear(_Static(layer), module.variables['params'], transposed,
                          self.inputs[path])
    else:
      out = next_fun(*args, **kwargs)
    self.layers[path] = _Layer(module.clone(parent=None), treedef, statics,
                               jax.ShapeDtypeStruct(out.shape, out.dtype),
                               [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self.inputs[path]])
    return out if self.zeros is None else out + self.zeros[path]


def _transposed(layer: _Layer, params: dict) -> dict:
  """The kernel of a linear layer laid out for `_input_grads`."""
  if isinstance(layer.module, nn.Dense):
    kernel = params['kernel']
    return {'kernel': kernel.T.astype(layer.module.dtype or kernel.dtype)}
  return layer.module.transposed_kernel(params['kernel'], layer.inputs[0].shape[-1])


def _input_grads(layer: _Layer, transposed: dict, g: jax.Array) -> list[jax.Array]:
  """The gradients of a linear layer's array arguments at its output gradient `g`."""
  if isinstance(layer.module, nn.Dense):
    (x,) = layer.inputs
    return [(g.astype(transposed['kernel'].dtype) @ transposed['kernel']).astype(x.dtype)]
  args, kwargs = layer.arguments(layer.inputs)
  return layer.module.input_grads(transposed, g, *args, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fixed_linear(layer: _Static, params, transposed, arrays):
  """A linear layer applied inside the loop with parameters that are not differentiated there,
  its input gradient taken from `transposed` (`_transposed(layer, params)`)."""
  return layer.value.call(params, arrays)


def _fixed_linear_fwd(layer, params, transposed, arrays):
  return layer.value.call(params, arrays), transposed


def _fixed_linear_bwd(layer, transposed, g):
  return None, None, _input_grads(layer.value, transposed, g)


_fixed_linear.defvjp(_fixed_linear_fwd, _fixed_linear_bwd)


def _split(params: dict, paths) -> tuple[dict, dict]:
  """`params['params']` split into the linear layers' subtrees `{path: subtree}` and a flat dict
  of the other leaves `{key path: leaf}`."""
  flat = traverse_util.flatten_dict(params['params'])
  linear = {path: {key[len(path):]: value for key, value in flat.items()
                   if key[:len(path)] == path} for path in paths}
  rest = {key: value for key, value in flat.items() if not any(key[:len(p)] == p for p in paths)}
  return {path: traverse_util.unflatten_dict(sub) for path, sub in linear.items()}, rest


def _join(linear: dict, rest: dict, params: dict) -> dict:
  flat = dict(rest)
  for path, sub in linear.items():
    flat.update({path + key: value for key, value in traverse_util.flatten_dict(sub).items()})
  return {**params, 'params': traverse_util.unflatten_dict(flat)}


def _layers(step, params, carry, xs) -> dict[tuple, _Layer]:
  """The linear layers one step calls, found by tracing it on shapes only."""
  taps = _Taps(params)

  def one_step(carry, x):
    with nn.intercept_methods(taps):
      return step(params, carry, x)

  jax.eval_shape(one_step, carry, jax.tree.map(lambda a: a[0], xs))
  return taps.layers


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan(step: Callable, params: dict, carry, xs):
  return jax.lax.scan(lambda c, x: step(params, c, x), carry, xs)


def _scan_fwd(step, params, carry, xs):
  layers = _layers(step, params, carry, xs)
  linear, rest = _split(params, tuple(layers))
  length = jax.tree.leaves(xs)[0].shape[0]
  zeros = {path: jnp.zeros((length, *layer.output.shape), layer.output.dtype)
           for path, layer in layers.items()}

  # Transposed once here, outside the loop; the barrier keeps XLA from folding the transpose
  # into the backward loop's products again.
  fixed = {path: (layer, jax.lax.optimization_barrier(_transposed(layer, linear[path])))
           for path, layer in layers.items()}

  def tapped(rest, zeros, carry, xs):
    def body(carry, inputs):
      x, zero = inputs
      joined = _join(linear, rest, params)
      taps = _Taps(joined, zero, fixed)
      with nn.intercept_methods(taps):
        carry, y = step(joined, carry, x)
      return carry, (y, jax.lax.stop_gradient(taps.inputs))
    carry, (ys, inputs) = jax.lax.scan(body, carry, (xs, zeros))
    return (carry, ys), inputs

  out, pullback, inputs = jax.vjp(tapped, rest, zeros, carry, xs, has_aux=True)
  return out, (pullback, inputs, linear, _Static(layers), params)


def _scan_bwd(step, residuals, cotangent):
  del step
  pullback, inputs, linear, layers, params = residuals
  d_rest, d_outputs, d_carry, d_xs = pullback(cotangent)
  d_linear = {path: _layer_grad(layer, linear[path], inputs[path], d_outputs[path])
              for path, layer in layers.value.items()}
  return _join(d_linear, d_rest, params), d_carry, d_xs


def _layer_grad(layer: _Layer, params, inputs: list, d_output):
  """The parameter gradient of `layer` summed over steps, differentiated at `d_output [T, ...]`.

  An `nn.Dense` acts on its last axis, so it is applied once to every row of its stacked inputs
  `[T, ..., K]`. Other layers (`BlockLinear` with its blocks-major output) are `vmap`ped over the
  steps with the parameters shared; the batching of a product with one shared operand folds the
  steps into its rows. Either way each weight's gradient is one product over `T x B` rows (a
  custom VJP inside, as `Dense`'s, would be batched per step under `vmap` instead)."""
  if isinstance(layer.module, nn.Dense):
    rows = [x.reshape(-1, x.shape[-1]) for x in inputs]
    apply = lambda p: layer.call(p, rows)  # noqa: E731
    return jax.vjp(apply, params)[1](d_output.reshape(-1, d_output.shape[-1]))[0]
  apply = lambda p: jax.vmap(lambda *arrays: layer.call(p, arrays))(*inputs)  # noqa: E731
  return jax.vjp(apply, params)[1](d_output)[0]


scan.defvjp(_scan_fwd, _scan_bwd)


# Record and replay: a layer stack applied per step inside a loop that is not differentiated,
# whose parameter gradient is taken after the loop over every step's rows at once.
#
# Where a loop applies a network to inputs that do not depend on its parameters (the actor inside
# imagination under REINFORCE: the states come from the world model, the actions carry no
# gradient), the gradient of its outputs with respect to its parameters is the gradient of the
# same network applied to the stacked inputs. `record` runs the network in the loop and returns
# each linear layer's output beside its own; `replay` applies it again after the loop to the
# stacked inputs, with each linear layer returning the recorded output instead of multiplying:
# the products run only in the backward pass, one per layer over all rows, and the loop keeps no
# residuals of its own (`lax.scan`'s VJP would store every step's inputs a second time and run a
# backward loop of skinny products). What the replay computes again is the elementwise work
# between the layers (norms and activations), which the backward pass needs anyway.


def _linear_path(context) -> tuple | None:
  """The module path of an `nn.Dense` call, None for any other method call."""
  if context.method_name != '__call__' or not isinstance(context.module, nn.Dense):
    return None
  return context.module.path


def record(apply: Callable) -> Callable:
  """`apply(*args) -> out` as `(*args) -> (out, {path: output})`, the outputs of every `nn.Dense`
  layer it calls (each at most once); stack them over the loop's steps for `replay`."""

  def recorded(*args, **kwargs):
    outputs = {}

    def tap(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = _linear_path(context)
      if path is not None:
        if path in outputs:
          raise ValueError(f'deferred_grads.record: the linear layer {"/".join(path)} is called '
                           'more than once; record a network that calls each layer once')
        outputs[path] = out
      return out

    with nn.intercept_methods(tap):
      out = apply(*args, **kwargs)
    return out, outputs

  return recorded


def replay(apply: Callable, outputs: dict) -> Callable:
  """`apply` whose `nn.Dense` layers return `outputs[path]` (recorded by `record` on the same
  inputs, stacked the way the inputs are) instead of computing their products, differentiated as
  if they had: `d kernel = x.T @ g` over all rows, `d x = g @ kernel.T`. The values are those of
  `apply` wherever the recorded outputs are; nothing checks that they are, so replay only what
  `record` gave for the very same parameters and inputs."""

  def replayed(*args, **kwargs):
    def tap(next_fun, args, kwargs, context):
      path = _linear_path(context)
      if path is None:
        return next_fun(*args, **kwargs)
      if path not in outputs:
        raise ValueError(f'deferred_grads.replay: no recorded output for the linear layer '
                         f'{"/".join(path)}; replay the network that was recorded')
      (x,) = args
      params = context.module.variables['params']
      y = jax.lax.stop_gradient(outputs[path])
      if y.shape[:-1] != x.shape[:-1]:
        raise ValueError(f'deferred_grads.replay: the layer {"/".join(path)} was recorded with '
                         f'rows {y.shape[:-1]} but is replayed on {x.shape[:-1]}; reshape the '
                         'recorded outputs as the inputs are')
      return _replayed_linear(x, params['kernel'], params.get('bias'), y)

    with nn.intercept_methods(tap):
      return apply(*args, **kwargs)

  return replayed


@jax.custom_vjp
def _replayed_linear(x, kernel, bias, y):
  del x, kernel, bias
  return y


def _replayed_linear_fwd(x, kernel, bias, y):
  return y, (x, kernel, bias)


def _replayed_linear_bwd(residuals, g):
  x, kernel, bias = residuals
  dtype = g.dtype  # the layer's compute dtype, that of its recorded output
  d_x, d_kernel = products.linear_grads(x.astype(dtype), kernel.astype(dtype), g)
  d_bias = None if bias is None else jnp.sum(g.reshape(-1, g.shape[-1]), 0).astype(bias.dtype)
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype), d_bias, jnp.zeros_like(g)


_replayed_linear.defvjp(_replayed_linear_fwd, _replayed_linear_bwd)
