"""dreamerjax: JAX/Flax world-model reinforcement learning."""

import os

# XLA:CPU flags tuned for the train step, added to XLA_FLAGS unless the user set the same flag
# (theirs wins). XLA reads XLA_FLAGS when its first backend starts, so they apply when dreamerjax
# is imported before jax computes anything (every script here does).
# - The concurrency-optimized scheduler (XLA's CPU default) runs independent ops side by side at
#   the price of more live memory; on a 2-core host it made the train step slower:
#   12m image 12.59 -> 11.33 s, 12m vector 6.10 -> 5.65 s, 1m image 7.54 -> 2.15 s without it
#   (`scripts/benchmark.py --only=train_step`, docs/benchmarks.md).
# - Convolutions in XLA's own (Eigen) kernels rather than YNNPACK's: the 5x5 stride-1 layers of
#   `arch=public2024` run 1.5-1.8x faster forward and input gradient there (32x32, 32 -> 48:
#   0.394 -> 0.215 s forward, 0.372 -> 0.250 s input gradient over 1024 frames), and the 12m
#   image update 7.2-8.4 -> 5.2-5.5 s per call (docs/benchmarks.md). Products stay in YNNPACK.
#   Older jax has no YNNPACK and refuses the flag (`OLDER_JAX_DROPS`).
CPU_XLA_FLAGS = {'xla_cpu_enable_concurrency_optimized_scheduler': 'false',
                 'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution'}
OLDER_JAX_DROPS = ('xla_cpu_experimental_ynn_fusion_type',)


def _add_default_xla_flags() -> None:
  flags = os.environ.get('XLA_FLAGS', '')
  extra = [f'--{name}={value}' for name, value in CPU_XLA_FLAGS.items() if name not in flags]
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join([flags, *extra]).strip()


_add_default_xla_flags()
