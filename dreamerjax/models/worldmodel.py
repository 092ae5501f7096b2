"""The world model: encoder, dynamics, decoder, reward and continue heads, and their losses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamerjax.models import dists, heads, nets, ops
from dreamerjax.models.rssm import RSSM, RSSMCell
from dreamerjax.models.ssm import SSM, SSMCore
from dreamerjax.models.transformer import Transformer, TransformerCore
from dreamerjax.types import Batch, Params

IMAGE, VECTOR = 'image', 'vector'
# Replay fields of the stored latent state (`model.replay_context`): `context_deter`, ...
CONTEXT_PREFIX = 'context_'


@dataclasses.dataclass(frozen=True)
class WorldModel:
  """Stateless description of the world model; parameters are passed to every method."""

  obs_space: dict          # {'image': ((H, W, C), uint8)} and/or {'vector': ((D,), float32)}
  action_size: int
  config: ml_collections.ConfigDict

  def __post_init__(self):
    unknown = set(self.obs_space) - {IMAGE, VECTOR}
    if unknown or not self.obs_space:
      raise ValueError(f'observation keys must be among {IMAGE!r}, {VECTOR!r}; got '
                       f'{sorted(self.obs_space)}')
    m = self.config
    dtype = jnp.dtype(m.compute_dtype)
    common = dict(norm=m.norm, act=m.act, dtype=dtype)
    public = m.get('arch') == 'public2024'  # see configs.ARCHS
    if m.get('dynamics') == 'transformer':
      dynamics = Transformer(TransformerCore(
          width=m.width, layers=m.layers, heads=m.heads, hidden=m.hidden, stoch=m.stoch,
          classes=m.classes, unimix=m.unimix, **common), context=m.context)
    elif m.get('dynamics') == 'ssm':
      dynamics = SSM(SSMCore(
          width=m.width, layers=m.layers, state=m.state, hidden=m.hidden, stoch=m.stoch,
          classes=m.classes, unimix=m.unimix, **common))
    else:
      dynamics = RSSM(RSSMCell(
          deter=m.deter, hidden=m.hidden, stoch=m.stoch, classes=m.classes, latent=m.latent,
          blocks=m.blocks, unimix=m.unimix, bias=public, prior_layers=m.get('prior_layers', 1),
          **common))
    object.__setattr__(self, 'dynamics', dynamics)
    modules = {}
    if IMAGE in self.obs_space:
      shape = tuple(self.obs_space[IMAGE][0])
      if shape[0] % 16 or shape[1] % 16:
        raise ValueError(f'image observations must be a multiple of 16 in height and width, got '
                         f'{shape}; set --config.env.image_size=64')
      modules['image_encoder'] = nets.ImageEncoder(m.depth, kernel=m.kernel, bias=public,
                                                   pool=public, **common)
      decoder = dict(bias=True, pool=True, kernel=m.kernel, blocks=8, deter=m.deter,
                     units=m.units) if public else {}
      modules['image_decoder'] = nets.ImageDecoder(shape, m.depth, **decoder, **common)
    if VECTOR in self.obs_space:
      size = self.obs_space[VECTOR][0][0]
      modules['vector_encoder'] = nets.VectorEncoder(m.encoder_layers, m.units, bias=public,
                                                     **common)
      modules['vector_decoder'] = nets.Head(size, m.decoder_layers, m.units, bias=public,
                                            **common)
    modules['reward'] = nets.Head(heads.scalar_outputs(m.reward_head, m.bins), m.head_layers,
                                  m.units, zero_init=m.reward_head == 'twohot', bias=public,
                                  **common)
    modules['cont'] = nets.Head(1, m.head_layers, m.units, bias=public, **common)
    object.__setattr__(self, 'modules', modules)
    object.__setattr__(self, 'bins', ops.symexp_bins(m.bins))

  # --------------------------------------------------------------------------- parameters

  def init(self, key: jax.Array) -> Params:
    keys = iter(jax.random.split(key, 8))
    params = {}
    dummy_obs = {k: jnp.zeros((1, *shape), dtype) for k, (shape, dtype) in self.obs_space.items()}
    embed = self.encode_with(params, dummy_obs, init_keys=keys)
    params['dynamics'] = self.dynamics.init_params(next(keys), embed.shape[-1], self.action_size)
    feat = jnp.zeros((1, self.dynamics.feature_size))
    for name in ('image_decoder', 'vector_decoder', 'reward', 'cont'):
      if name in self.modules:
        params[name] = self.modules[name].init(next(keys), feat)
    return params

  def encode_with(self, params, obs, init_keys=None) -> jax.Array:
    """Embeds `[..., E]` of the observations; with `init_keys`, creates encoder params in place."""
    embeds = []
    for key, name in ((IMAGE, 'image_encoder'), (VECTOR, 'vector_encoder')):
      if name not in self.modules:
        continue
      if init_keys is not None:
        params[name] = self.modules[name].init(next(init_keys), obs[key])
      embeds.append(self.modules[name].apply(params[name], obs[key]))
    return jnp.concatenate(embeds, -1).astype(jnp.float32)

  def encode(self, params, obs) -> jax.Array:
    return self.encode_with(params, obs)

  def apply(self, name: str, params, features):
    return self.modules[name].apply(params[name], features)

  def reward(self, params, features) -> jax.Array:
    return heads.scalar_predict(self.config.reward_head, self.apply('reward', params, features),
                                self.bins)

  def cont_logits(self, params, features) -> jax.Array:
    return self.apply('cont', params, features)[..., 0]

  def decode(self, params, features) -> dict[str, jax.Array]:
    """Predicted observations in observation units: `vector` (symexp of the decoder) and `image`
    (mean in [0, 1])."""
    out = {}
    if IMAGE in self.obs_space:
      out[IMAGE] = self.apply('image_decoder', params, features)
    if VECTOR in self.obs_space:
      out[VECTOR] = ops.symexp(self.apply('vector_decoder', params, features))
    return out

  # --------------------------------------------------------------------------- replay context

  def context_spec(self) -> dict:
    """Replay spec of the stored latent state: `context_<key>` per key of the dynamics carry
    (RSSM: `deter`, `stoch`); empty unless `model.replay_context`."""
    if not self.config.get('replay_context'):
      return {}
    carry = jax.eval_shape(lambda: self.dynamics.initial(1))
    return {CONTEXT_PREFIX + name: (value.shape[1:], value.dtype) for name, value in carry.items()}

  def context_fields(self, carry: dict) -> dict:
    """The replay fields that store the dynamics `carry` `[..., N, ...]` the policy enters a step
    with (the posterior after the previous step); empty unless `model.replay_context`.

    The acting state is stored, not the state a training sequence ends in: it is written with
    the step itself (one `add`, no writes from the train step into the replay), and every step
    gets one. Its parameters are those of the time of acting, older than the model it is
    replayed to; the stored state is a start point that the model need not reproduce exactly
    (the RSSM's state is its features), and gradients do not flow into it.
    """
    if not self.config.get('replay_context'):
      return {}
    return {CONTEXT_PREFIX + name: value for name, value in carry.items()}

  def start_carry(self, batch: Batch) -> tuple[dict, jax.Array]:
    """The dynamics carry that a replayed batch starts from, and the `is_first [B, T]` to observe
    it with: with `model.replay_context`, the stored state of each sequence's first step
    (gradients stopped; a real `is_first` still resets it), else a fresh state (the first step
    is treated as `is_first`)."""
    if not self.config.get('replay_context'):
      return (self.dynamics.initial(batch['reward'].shape[0]),
              batch['is_first'].at[:, 0].set(True))
    names = self.dynamics.initial(1).keys()
    carry = {name: batch[CONTEXT_PREFIX + name][:, 0] for name in names}
    return jax.lax.stop_gradient(carry), batch['is_first']

  # --------------------------------------------------------------------------- training

  def loss(self, params, batch: Batch, key: jax.Array):
    """World-model loss on a batch `[B, T, ...]`.

    Returns `(loss, (features [B,T,F], metrics))`; sequences start from `start_carry(batch)`.
    """
    m = self.config
    with jax.named_scope('encoder'):
      embeds = self.encode(params, batch)
    carry, is_first = self.start_carry(batch)
    with jax.named_scope('dynamics'):
      _, features, post, prior = self.dynamics.observe(
          params['dynamics'], carry, embeds, batch['action'], is_first, key)
    losses = {}
    with jax.named_scope('decoder'):
      if IMAGE in self.obs_space:
        target = batch[IMAGE].astype(jnp.float32) / 255.0
        prediction = self.apply('image_decoder', params, features)
        losses[IMAGE] = m.decoder_scale * jnp.sum(jnp.square(prediction - target), (-3, -2, -1))
      if VECTOR in self.obs_space:
        prediction = self.apply('vector_decoder', params, features)
        losses[VECTOR] = m.decoder_scale * jnp.sum(
            jnp.square(prediction - ops.symlog(batch[VECTOR].astype(jnp.float32))), -1)
    with jax.named_scope('reward_cont_heads'):
      reward_out = self.apply('reward', params, features)
      losses['reward'] = m.reward_scale * heads.scalar_loss(m.reward_head, reward_out,
                                                            batch['reward'], self.bins)
      cont_target = 1.0 - batch['is_terminal'].astype(jnp.float32)
      losses['cont'] = m.cont_scale * optax.sigmoid_binary_cross_entropy(
          self.cont_logits(params, features), cont_target)
    with jax.named_scope('kl'):
      dyn, rep = self.dynamics.loss(post, prior, m.free_nats)
    losses['dyn'], losses['rep'] = m.dyn_scale * dyn, m.rep_scale * rep
    total = sum(jnp.mean(value) for value in losses.values())
    metrics = {f'wm/loss_{name}': jnp.mean(value) for name, value in losses.items()}
    metrics['wm/loss'] = total
    metrics['wm/kl'] = jnp.mean(dyn)
    metrics['wm/post_entropy'] = jnp.mean(dists.latent_entropy(post))
    metrics['wm/prior_entropy'] = jnp.mean(dists.latent_entropy(prior))
    metrics['wm/reward_mean'] = jnp.mean(batch['reward'])
    return total, (features, metrics)

