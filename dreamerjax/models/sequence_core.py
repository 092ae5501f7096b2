"""The parts shared by dynamics that run a whole `[B, T]` sequence in one pass (Transformer, SSM):
the tokens built from the previous latent and action, and the categorical prior and posterior.

The prior over z_t is read from the sequence model's summary `h_t` of the steps before t; the
posterior over z_t from the observation embedding alone. With the posterior independent of h,
all posterior samples are known before the sequence model runs, so training needs one pass over
the sequence (attention, or a parallel scan) instead of a step-by-step loop.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax.models import dists, nets


class SequenceCore(nn.Module, kw_only=True):
  """Base of a sequence dynamics core; a subclass adds its fields and `blocks` in `setup` (after
  `super().setup()`)."""

  width: int
  layers: int
  hidden: int
  stoch: int            # categorical groups
  classes: int
  unimix: float = 0.01
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.token_in = nn.Dense(self.width, dtype=self.dtype)
    self.out_norm = nets.Norm(self.norm)
    dense = lambda: nets.Dense(self.hidden, self.norm, self.act, self.dtype)  # noqa: E731
    self.prior_hidden, self.posterior_hidden = dense(), dense()
    self.prior_out = nn.Dense(self.stoch * self.classes, dtype=jnp.float32)
    self.posterior_out = nn.Dense(self.stoch * self.classes, dtype=jnp.float32)

  def tokens(self, stoch, action):
    """`[..., W]` tokens of z_{t-1} `[..., G, K]` and a_{t-1} `[..., A]` (large continuous
    actions scaled down without changing their direction, as the RSSM does)."""
    stoch = stoch.reshape(*stoch.shape[:-2], -1)
    action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
    return self.token_in(jnp.concatenate([stoch, action], -1).astype(self.dtype))

  def _stats(self, raw):
    logits = raw.astype(jnp.float32).reshape(*raw.shape[:-1], self.stoch, self.classes)
    return {'logits': dists.unimix_logits(logits, self.unimix)}

  def prior(self, deter):
    return self._stats(self.prior_out(self.prior_hidden(deter)))

  def posterior(self, embed):
    return self._stats(self.posterior_out(self.posterior_hidden(embed.astype(self.dtype))))
