"""A memory suite as small pure-JAX envs (`jax_envs.JaxEnv`): `--config.task=jax:CueRecall-30`.

* `CueRecall-L` (L = 5, 15, 30, 60, 120): hold one bit for L steps (bsuite memory_length);
  episodes of L + 1 steps, terminal, return +1 or -1.
* `RepeatPrevious-k` (k = 4, 8, 16, 32, 64): a k-step delay line of card suits, a capacity test
  (POPGym); episodes of 52 d - 1 steps (d decks), truncated, return in [-1, 1].
* `DiscountingChain-m` (m = 0..4, bsuite's mapping seeds): a control, credit assignment over
  1-100 steps with nothing to remember (bsuite); 100 steps, terminal, return 1 or 1.1.
* `CueRecallOracle-L`: CueRecall with the cue in every observation, the control that needs no
  memory.

Any positive L or k works; the values above are the sweeps (`LENGTHS`, `DELAYS`). A bare name takes
the class's default (`CueRecall` is `CueRecall-30`). Each env's `success(episode_return)` is its
score in [0, 1] and `truth(state)` the quantity a state probe should find in the latents.
Semantics in detail: docs/environments.md.
"""

from __future__ import annotations

import dataclasses
import difflib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dreamerjax.data import vector_env

LENGTHS = (5, 15, 30, 60, 120)   # CueRecall sweep
DELAYS = (4, 8, 16, 32, 64)      # RepeatPrevious sweep
MAPPINGS = (0, 1, 2, 3, 4)       # DiscountingChain sweep (bsuite's mapping seeds)


class _VectorTask:
  """A vector observation of `obs_size` entries and `num_actions` discrete actions."""

  obs_size: int
  num_actions: int

  @property
  def obs_space(self) -> dict:
    return {'vector': ((self.obs_size,), np.dtype(np.float32))}

  @property
  def act_space(self) -> vector_env.ActionSpace:
    return vector_env.discrete_actions(self.num_actions)


@struct.dataclass
class CueState:
  cue: jax.Array    # int32, -1 or +1
  time: jax.Array   # int32, the index t of the current observation


@dataclasses.dataclass(frozen=True)
class CueRecall(_VectorTask):
  """bsuite's memory_length with one bit, with the observation of step t at step t.

  Observation `t` (t = 0 .. L) is `[countdown, query, cue]`: `countdown = 1 - t / L`; `query` is 1
  at t = L only; `cue` is the episode's ±1 at t = 0 only (every step with `oracle`). The action
  after observation L (the episode's (L+1)-th) earns +1 if it names the cue (action 1 for +1,
  action 0 for -1) and -1 otherwise, and terminates the episode; every earlier action earns 0.
  bsuite's own env returns each observation one step late (the cue twice) and shows the query
  index (always 0 with one bit) as its flag; here the delay from cue to answer is exactly L.
  """

  length: int = 30
  oracle: bool = False
  obs_size, num_actions = 3, 2

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'CueRecall length must be >= 1, got {self.length}')

  @property
  def episode_length(self) -> int:
    """Actions per episode: the answer is the (L+1)-th."""
    return self.length + 1

  def reset(self, key: jax.Array) -> tuple[CueState, jax.Array]:
    state = CueState(jnp.where(jax.random.bernoulli(key), 1, -1).astype(jnp.int32),
                     jnp.int32(0))
    return state, self._observe(state)

  def step(self, key: jax.Array, state: CueState, action: jax.Array):
    del key
    query = state.time == self.length
    correct = (action == 1) == (state.cue > 0)
    reward = jnp.where(query, jnp.where(correct, 1.0, -1.0), 0.0)
    state = state.replace(time=state.time + 1)
    return state, self._observe(state), reward, query, jnp.bool_(False)

  def truth(self, state: CueState) -> dict:
    return {'cue': state.cue.astype(jnp.float32)}

  def success(self, episode_return: float) -> float:
    return float(episode_return > 0)

  def _observe(self, state: CueState) -> jax.Array:
    t = state.time
    shown = (t == 0) | self.oracle
    return jnp.stack([jnp.maximum(1.0 - t / self.length, 0.0), (t == self.length) * 1.0,
                      shown * state.cue * 1.0]).astype(jnp.float32)


@struct.dataclass
class DeckState:
  suits: jax.Array  # int32 [52 d]: the suit (0..3) of each card, in the order dealt
  time: jax.Array   # int32, the index t of the current card


@dataclasses.dataclass(frozen=True)
class RepeatPrevious(_VectorTask):
  """POPGym's RepeatPrevious: cards of `decks` shuffled decks are dealt one per step, and the
  agent must name the suit of the card seen k steps ago.

  Observation t is the one-hot suit `[4]` of card t. For t >= k the action after observation t
  earns `+1 / (T - k)` if it is the suit of card t - k and `-1 / (T - k)` otherwise (before that,
  0), so the return is in [-1, 1] and `(return + 1) / 2` is the fraction named right. An episode
  has `T = 52 decks - 1` actions and ends truncated (POPGym ends it with `truncated`: nothing in
  the observation tells the end is near). `decks` defaults to POPGym's presets, `1 + k // 32`
  (Easy k=4: 1, Medium k=32: 2, Hard k=64: 3). POPGym's code scores the card k - 1 steps back
  (`[-k]` of the hand, current card included); here it is k steps back, as its docs say.
  """

  k: int = 8
  decks: int | None = None
  obs_size, num_actions = 4, 4

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f'RepeatPrevious k must be >= 1, got {self.k}')
    if self.episode_length <= self.k:
      raise ValueError(f'RepeatPrevious-{self.k} needs more than {self.k + 1} cards; '
                       f'{self.num_decks} decks have {self.num_cards}')

  @property
  def num_decks(self) -> int:
    return self.decks if self.decks is not None else 1 + self.k // 32

  @property
  def num_cards(self) -> int:
    return 52 * self.num_decks

  @property
  def episode_length(self) -> int:
    return self.num_cards - 1

  def reset(self, key: jax.Array) -> tuple[DeckState, jax.Array]:
    deck = jnp.repeat(jnp.arange(4, dtype=jnp.int32), self.num_cards // 4)
    state = DeckState(jax.random.permutation(key, deck), jnp.int32(0))
    return state, self._observe(state)

  def step(self, key: jax.Array, state: DeckState, action: jax.Array):
    del key
    t = state.time
    target = state.suits[jnp.maximum(t - self.k, 0)]
    scale = 1.0 / (self.episode_length - self.k)
    reward = jnp.where(t >= self.k, jnp.where(action == target, scale, -scale), 0.0)
    state = state.replace(time=t + 1)
    return state, self._observe(state), reward, jnp.bool_(False), t + 1 == self.episode_length

  def truth(self, state: DeckState) -> dict:
    """The one-hot suit the current action should name (zeros while t < k)."""
    t = state.time
    target = jax.nn.one_hot(state.suits[jnp.maximum(t - self.k, 0)], 4)
    return {'target': target * (t >= self.k)}

  def success(self, episode_return: float) -> float:
    return float((episode_return + 1.0) / 2.0)

  def _observe(self, state: DeckState) -> jax.Array:
    card = state.suits[jnp.minimum(state.time, self.num_cards - 1)]
    return jax.nn.one_hot(card, 4, dtype=jnp.float32)


@struct.dataclass
class ChainState:
  context: jax.Array  # int32, -1 until the first action, then that action (the chain)
  time: jax.Array     # int32


@dataclasses.dataclass(frozen=True)
class DiscountingChain(_VectorTask):
  """bsuite's discounting_chain, a control: the first action picks one of 5 chains, whose reward
  comes 1, 3, 10, 30 or 100 steps later; chain `mapping_seed % 5` pays 1.1, the others 1.

  Observation `[context, t / 100]` (context -1 until the first action, then its index); later
  actions do nothing. Episodes have 100 steps and terminate. Nothing needs remembering (the chain
  is in every observation); what is hard is valuing a reward 100 steps away against 1 now.
  """

  mapping_seed: int = 0
  delays: tuple = (1, 3, 10, 30, 100)
  episode_length: int = 100
  obs_size = 2

  @property
  def num_actions(self) -> int:
    return len(self.delays)

  @property
  def rewards(self) -> np.ndarray:
    rewards = np.ones(len(self.delays), np.float32)
    rewards[self.mapping_seed % len(self.delays)] += 0.1
    return rewards

  def reset(self, key: jax.Array) -> tuple[ChainState, jax.Array]:
    del key
    state = ChainState(jnp.int32(-1), jnp.int32(0))
    return state, self._observe(state)

  def step(self, key: jax.Array, state: ChainState, action: jax.Array):
    del key
    context = jnp.where(state.time == 0, action, state.context).astype(jnp.int32)
    time = state.time + 1
    delays, rewards = jnp.asarray(self.delays), jnp.asarray(self.rewards)
    reward = jnp.where(time == delays[context], rewards[context], 0.0)
    state = ChainState(context, time)
    return state, self._observe(state), reward, time == self.episode_length, jnp.bool_(False)

  def truth(self, state: ChainState) -> dict:
    return {'context': state.context.astype(jnp.float32)}

  def success(self, episode_return: float) -> float:
    """1 for the bonus chain's 1.1, else 0."""
    return float(episode_return > 1.05)

  def _observe(self, state: ChainState) -> jax.Array:
    return jnp.stack([state.context * 1.0, state.time / self.episode_length]).astype(jnp.float32)


# name -> (class, the field the number after `-` sets, extra fields)
SUITE = {
    'CueRecall': (CueRecall, 'length', {}),
    'CueRecallOracle': (CueRecall, 'length', {'oracle': True}),
    'RepeatPrevious': (RepeatPrevious, 'k', {}),
    'DiscountingChain': (DiscountingChain, 'mapping_seed', {}),
}


def tasks() -> list[str]:
  """The `jax:` tasks of the sweeps."""
  return ([f'jax:CueRecall-{n}' for n in LENGTHS] + [f'jax:RepeatPrevious-{k}' for k in DELAYS]
          + [f'jax:DiscountingChain-{m}' for m in MAPPINGS])


def make(name: str):
  """The env `name` (`CueRecall-30`, `RepeatPrevious-8`, `DiscountingChain-4`, `CueRecall`)."""
  base, dash, number = name.rpartition('-') if '-' in name else (name, '', '')
  if base not in SUITE:
    close = difflib.get_close_matches(base, list(SUITE), n=2, cutoff=0.5)
    hint = f' Did you mean {" or ".join(f"jax:{c}-N" for c in close)}?' if close else ''
    raise ValueError(f'unknown JAX env jax:{name}.{hint} The memory suite has '
                     f'{", ".join(f"jax:{k}-N" for k in SUITE)}; for an env of your own name '
                     "'jax:<module>:<class or factory>'")
  cls, field, extra = SUITE[base]
  if dash and not number.isdigit():
    raise ValueError(f'jax:{name}: the number after {base}- must be a whole number, got '
                     f'{number!r}')
  return cls(**({field: int(number)} if dash else {}), **extra)


def span(task: str) -> int:
  """The steps an agent must look back on a memory task (`jax:` prefix optional): L of
  CueRecall-L and CueRecallOracle-L, k of RepeatPrevious-k; a ValueError for other tasks."""
  env = make(task.removeprefix('jax:'))
  if isinstance(env, CueRecall):
    return env.length
  if isinstance(env, RepeatPrevious):
    return env.k
  raise ValueError(f'{task} is not a memory task (CueRecall-L or RepeatPrevious-k)')
