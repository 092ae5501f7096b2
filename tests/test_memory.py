"""The memory suite (dreamerjax.data.memory): hand-checked observations, rewards, episode lengths
and flags, under jit and vmap, and through `envs.make_env`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.data import envs, jax_envs, memory


def rollout(env, steps, num_envs, policy, seed=0):
  """`steps` vectorized steps in one jitted scan; `policy(env_state, t) -> action [N]` reads the
  env's state (an oracle) or ignores it. Returns the reset dict and the step dicts `[T, N]` and
  the truth before each step."""
  vectorized = jax_envs.Vectorized(env, num_envs)

  @jax.jit
  def run(keys):
    state, first = vectorized.reset(keys)

    def body(state, t):
      truth = vectorized.truth(state)
      state, out = vectorized.step(state, policy(state.env, t))
      return state, (out, truth)

    _, (outs, truths) = jax.lax.scan(body, state, jnp.arange(steps))
    return first, outs, truths

  return jax.tree.map(np.asarray, run(jax_envs.env_keys(seed, num_envs)))


def episode_ends(outs, i):
  return list(np.flatnonzero(outs['is_last'][:, i]) + 1)  # 1-based step index of each is_last


# ----------------------------------------------------------------------------- CueRecall


def test_cue_recall_observations_by_hand():
  env = memory.CueRecall(length=5)
  state, obs = env.reset(jax.random.key(0))
  cue = int(state.cue)
  assert cue in (-1, 1)
  seen = [np.asarray(obs)]
  for _ in range(6):
    state, obs, reward, terminated, truncated = env.step(jax.random.key(1), state, 0)
    seen.append(np.asarray(obs))
  # [countdown, query, cue]: the cue at t = 0 only, the query flag at t = L only.
  expected = [[1.0, 0, cue], [0.8, 0, 0], [0.6, 0, 0], [0.4, 0, 0], [0.2, 0, 0], [0.0, 1, 0],
              [0.0, 0, 0], [0.0, 0, 0]]
  np.testing.assert_allclose(np.stack(seen), expected[:7], atol=1e-6)
  oracle = memory.CueRecall(length=5, oracle=True)
  state, obs = oracle.reset(jax.random.key(0))
  for _ in range(5):
    assert float(obs[2]) == float(state.cue)
    state, obs, *_ = oracle.step(jax.random.key(1), state, 0)


@pytest.mark.parametrize('length', memory.LENGTHS)
def test_cue_recall_rewards_lengths_and_flags(length):
  """Env 0 answers the cue, env 1 the opposite; both act at random before the query."""
  def policy(state, t):
    noise = jax.random.randint(jax.random.key(t), (4,), 0, 2)
    right = (state.cue > 0).astype(jnp.int32)
    answer = jnp.where(jnp.arange(4) % 2 == 0, right, 1 - right)
    return jnp.where(state.time == length, answer, noise)

  steps = 2 * (length + 2)
  first, outs, truths = rollout(memory.CueRecall(length=length), steps, 4, policy)
  assert first['is_first'].all()
  for i in range(4):
    # Episodes of L + 1 steps, terminal; the step after each is a reset step.
    assert episode_ends(outs, i) == [length + 1, 2 * length + 3]
    assert outs['is_terminal'][:, i].tolist() == outs['is_last'][:, i].tolist()
    assert outs['is_first'][length + 1, i] and outs['reward'][length + 1, i] == 0
    rewards = outs['reward'][:, i]
    expected = 1.0 if i % 2 == 0 else -1.0
    assert rewards[length] == expected and rewards[2 * length + 2] == expected
    assert np.count_nonzero(rewards) == 2
  # The truth is the cue, the same through an episode; the cue obs shows it at t = 0.
  np.testing.assert_array_equal(truths['cue'][0, :, 0], first['vector'][:, 2])
  assert (truths['cue'][:length + 1] == truths['cue'][0]).all()
  env = memory.CueRecall(length=length)
  assert env.success(1.0) == 1.0 and env.success(-1.0) == 0.0


def test_cue_recall_cue_is_balanced():
  first, _, _ = rollout(memory.CueRecall(length=5), 1, 256, lambda s, t: jnp.zeros(256, jnp.int32))
  cues = first['vector'][:, 2]
  assert set(cues) == {-1.0, 1.0} and 0.35 < (cues > 0).mean() < 0.65


# ----------------------------------------------------------------------------- RepeatPrevious


def test_repeat_previous_rewards_by_hand():
  env = memory.RepeatPrevious(k=2)  # one deck: 51 actions, 49 scored, each +-1/49
  suits = jnp.asarray(np.tile([0, 1, 2, 3], 13), jnp.int32)
  state = memory.DeckState(suits, jnp.int32(0))
  rewards, observed = [], [int(np.argmax(env._observe(state)))]
  actions = [3, 3, 0, 0, 2, 1]  # t = 0, 1 unscored; then right, wrong, right, wrong
  for action in actions:
    state, obs, reward, terminated, truncated = env.step(jax.random.key(0), state, action)
    rewards.append(float(reward))
    observed.append(int(np.argmax(obs)))
    assert not terminated and not truncated
  assert observed == [0, 1, 2, 3, 0, 1, 2]
  scale = 1 / 49
  np.testing.assert_allclose(rewards, [0, 0, scale, -scale, scale, -scale], rtol=1e-6)


@pytest.mark.parametrize('k', memory.DELAYS)
def test_repeat_previous_episode_lengths_and_returns(k):
  env = memory.RepeatPrevious(k=k)
  decks = {4: 1, 8: 1, 16: 1, 32: 2, 64: 3}[k]  # POPGym's Easy / Medium / Hard decks
  assert env.episode_length == 52 * decks - 1
  length = env.episode_length

  def policy(state, t):  # env 0: right (reads the dealt cards); env 1: always wrong
    target = state.suits[jnp.arange(2), jnp.maximum(state.time - k, 0)]
    return jnp.stack([target[0], (target[1] + 1) % 4])

  first, outs, truths = rollout(env, length + 1, 2, policy)
  for i in range(2):
    assert episode_ends(outs, i) == [length]
    assert not outs['is_terminal'].any()  # the end is a truncation, as in POPGym
    assert outs['is_first'][length, i]
  returns = outs['reward'][:length].sum(0)
  np.testing.assert_allclose(returns, [1.0, -1.0], rtol=1e-5)
  assert (outs['reward'][:k] == 0).all()
  assert env.success(float(returns[0])) == pytest.approx(1.0)
  assert env.success(float(returns[1])) == pytest.approx(0.0, abs=1e-6)
  # Every suit is dealt equally often; the truth is the one-hot suit to name, zero while t < k.
  cards = np.concatenate([first['vector'][None], outs['vector'][:length]]).argmax(-1)
  assert np.bincount(cards[:, 0], minlength=4).tolist() == [13 * decks] * 4
  assert (truths['target'][:k] == 0).all()
  np.testing.assert_array_equal(truths['target'][k:length, 0].argmax(-1), cards[:length - k, 0])


def test_repeat_previous_needs_enough_cards():
  with pytest.raises(ValueError, match='more than'):
    memory.RepeatPrevious(k=60, decks=1)


# ----------------------------------------------------------------------------- DiscountingChain


@pytest.mark.parametrize('mapping_seed', [0, 4])
def test_discounting_chain_rewards_and_lengths(mapping_seed):
  env = memory.DiscountingChain(mapping_seed=mapping_seed)
  actions = jnp.arange(5, dtype=jnp.int32)  # env i takes chain i
  first, outs, truths = rollout(env, 101, 5, lambda s, t: actions)
  np.testing.assert_array_equal(first['vector'], [[-1.0, 0.0]] * 5)
  for chain, delay in enumerate((1, 3, 10, 30, 100)):
    rewards = outs['reward'][:100, chain]
    bonus = 1.1 if chain == mapping_seed else 1.0
    assert np.flatnonzero(rewards).tolist() == [delay - 1]  # step `delay` pays
    assert rewards[delay - 1] == pytest.approx(bonus)
    assert episode_ends(outs, chain) == [100]
    assert outs['is_terminal'][99, chain] and outs['is_first'][100, chain]
    assert env.success(float(rewards.sum())) == float(chain == mapping_seed)
  # Observation [context, t / 100]: the chosen chain from the first step on.
  np.testing.assert_allclose(outs['vector'][9], np.stack([np.arange(5), np.full(5, 0.1)], -1),
                             rtol=1e-6)
  assert truths['context'][0, :, 0].tolist() == [-1.0] * 5


# ----------------------------------------------------------------------------- names


def test_names():
  assert memory.make('CueRecall-30') == memory.CueRecall(length=30)
  assert memory.make('CueRecall') == memory.CueRecall()
  assert memory.make('CueRecallOracle-5') == memory.CueRecall(length=5, oracle=True)
  assert memory.make('RepeatPrevious-64').num_cards == 156
  assert memory.make('DiscountingChain-3').mapping_seed == 3
  with pytest.raises(ValueError, match='whole number'):
    memory.make('CueRecall-abc')
  with pytest.raises(ValueError, match='Did you mean jax:RepeatPrevious-N'):
    memory.make('RepeatPrevous-4')
  with pytest.raises(ValueError, match='length must be >= 1'):
    memory.make('CueRecall-0')


def test_sweep_tasks_through_make_env():
  for task in memory.tasks():  # every name of the sweeps resolves
    assert jax_envs.resolve(task.removeprefix('jax:')) is not None
  for task in ('jax:CueRecall-120', 'jax:RepeatPrevious-64', 'jax:DiscountingChain-4'):
    env = envs.make_env(task, 2, seed=0)
    out = env.reset()
    assert out['is_first'].all() and out['vector'].dtype == np.float32
    out = env.step(np.zeros(2, np.int32))
    assert not out['is_first'].any()
    env.close()
