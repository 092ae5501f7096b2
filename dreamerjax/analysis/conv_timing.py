"""The stride-1 5x5 convolutions of `arch=public2024` timed alone with plain `lax.conv`, so that
one file measures what two jax versions' XLA:CPU make of the same program.

It imports only jax and the standard library, so both sides' interpreters run it by path:

    .venv/bin/python dreamerjax/analysis/conv_timing.py --out=/tmp/conv_ours.json
    /tmp/dreamerv3-public/venv/bin/python dreamerjax/analysis/conv_timing.py \
        --out=/tmp/conv_public.json      # the public code's venv (jax 0.4.33), from bench_public

Per layer (`conv_shapes` at the 12m width 16): the forward pass and the gradient (of the kernel,
and of the input except at the image layer) over 1024 frames, the minimum of `--repeats` calls
after one warm-up; every array is an argument, so XLA cannot fold any of it at compile time.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp


def conv_shapes(depth: int, multipliers=(2, 3, 4, 4), size: int = 64,
                channels: int = 3) -> list[dict]:
  """The stride-1 convolutions of `arch=public2024` at width `depth`: the encoder's (input size,
  channels in, out), then the decoder's, each convolving after a 2x upsampling."""
  widths = [depth * m for m in multipliers]
  encoder = [dict(part='encoder', size=size >> i, inputs=c_in, outputs=c_out)
             for i, (c_in, c_out) in enumerate(zip([channels] + widths[:-1], widths, strict=True))]
  reverse = widths[::-1]
  decoder = [dict(part='decoder', size=size >> (len(widths) - 1 - i), inputs=c_in,
                  outputs=c_out) for i, (c_in, c_out) in
             enumerate(zip(reverse, reverse[1:] + [channels], strict=True))]
  return encoder + decoder


def layer_arrays(depth: int, frames: int, kernel: int):
  """Per layer of `conv_shapes(depth)`: `(shape, x, w, cotangent, argnums)`, random arrays of
  `frames` frames; `argnums` the arguments to differentiate (the kernel only at the image layer,
  whose input needs no gradient). Pass every array as an argument: an array closed over is a
  constant that XLA folds into the program (whole-array transposes at compile time)."""
  for index, shape in enumerate(conv_shapes(depth)):
    n, c, o = shape['size'], shape['inputs'], shape['outputs']
    x = jax.random.normal(jax.random.key(0), (frames, n, n, c))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, c, o)) / (kernel * c ** 0.5)
    cotangent = jax.random.normal(jax.random.key(2), (frames, n, n, o))
    yield shape, x, w, cotangent, ((1,) if index == 0 else (0, 1))


def lax_conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _min_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  calls = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    calls.append(time.perf_counter() - start)
  return min(calls)


def time_layers(depth: int = 16, frames: int = 1024, kernel: int = 5, repeats: int = 3) -> dict:
  """`{'jax': version, 'layers': [{part, size, inputs, outputs, forward_s, gradient_s}]}`."""
  layers = []
  for shape, x, w, g, argnums in layer_arrays(depth, frames, kernel):
    grad = jax.jit(jax.grad(lambda x, w, g: jnp.vdot(lax_conv(x, w), g), argnums))
    layers.append({**shape, 'forward_s': _min_seconds(jax.jit(lax_conv), (x, w), repeats),
                   'gradient_s': _min_seconds(grad, (x, w, g), repeats)})
  return {'jax': jax.__version__, 'frames': frames, 'kernel': kernel, 'depth': depth,
          'layers': layers, 'total_s': sum(r['forward_s'] + r['gradient_s'] for r in layers)}


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--depth', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=3)
  flags = parser.parse_args()
  result = time_layers(flags.depth, repeats=flags.repeats)
  with open(flags.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({'jax': result['jax'], 'total_s': round(result['total_s'], 2)}))
