"""Does a world model's latent hold what it saw d steps ago? Probes for the memory suite.

* `recall_accuracy`: from the filtered (posterior) features, an MLP probe (`probes.fit_probe`)
  predicts what the task asks the agent to remember (`recall_labels`): on CueRecall the ±1 cue,
  from the steps `d` steps into an episode (0.5 is chance); on RepeatPrevious the suit of the card
  seen `d` steps before, from every step at least `d` in (0.25 is chance). The score is the share
  of held-out steps (the streams of the last quarter of the envs) it gets right; at d = 0 the
  answer is in the observation itself.
* `probe_run`: that accuracy at delay L (or k) for every seed of a trained run of
  experiments/memory.py (the run's own policy acting), written to `<workdir>/memory_probe.json`
  for the memory table.
* `world_model_tier`: the cheap tier that runs at every L or k: a world model alone (no
  actor-critic) trained on random-policy data of the vmapped JAX env, then probed at several
  delays.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamerjax.agents.agent import Agent
from dreamerjax.analysis import probes
from dreamerjax.data import jax_envs, memory, replay
from dreamerjax.run import common, configs, validation
from dreamerjax.run.offline import add_many

PROBE_FILE = 'memory_probe.json'
TIER_FILE = 'memory_world_model.json'
CUE = 'truth/cue'        # CueRecall: the episode's ±1 cue
TARGET = 'truth/target'  # RepeatPrevious: the one-hot suit the action should name


def elapsed_steps(is_first: np.ndarray) -> np.ndarray:
  """Steps since the episode's first step, `[N, T]` int: 0 where `is_first`, else one more than
  the step before (the streams' first step counts as a start)."""
  is_first = np.asarray(is_first, bool)
  elapsed = np.zeros(is_first.shape, np.int64)
  for t in range(1, is_first.shape[1]):
    elapsed[:, t] = np.where(is_first[:, t], 0, elapsed[:, t - 1] + 1)
  return elapsed


def sign_accuracy(prediction: np.ndarray, target: np.ndarray) -> float:
  """Share of entries where the signs of `prediction` and the ±1 `target` agree; a prediction of
  exactly 0 is a tie and counts one half. (A probe that learned nothing predicts its training
  mean, which is exactly 0 on a balanced training set: its score is then 0.5, chance, not 0.)"""
  prediction, target = np.ravel(prediction), np.ravel(target)
  agree = np.where(prediction == 0, 0.5, np.sign(prediction) == np.sign(target))
  return float(np.mean(agree))


def _truth_key(data: dict) -> str:
  """`truth/cue` or `truth/target`, whichever the streams hold; a ValueError for neither."""
  for key in (CUE, TARGET):
    if key in data:
      return key
  raise ValueError(f'recall probes need {CUE} (CueRecall) or {TARGET} (RepeatPrevious) in the '
                   f'data; got {sorted(k for k in data if k.startswith("truth/"))}')


def recall_labels(data: dict, delay: int) -> tuple[np.ndarray, np.ndarray]:
  """What a latent should recall `delay` steps on, per step of `[N, T]` streams: `(at [N, T],
  labels [N, T, C])`. CueRecall (`truth/cue` in `data`): the ±1 cue (C = 1) at the steps exactly
  `delay` into an episode. RepeatPrevious (`truth/target`): the one-hot suit (C = 4) of the card
  observed `delay` steps before, at every step at least `delay` into an episode."""
  elapsed = elapsed_steps(data['is_first'])
  if _truth_key(data) == CUE:
    return elapsed == delay, np.asarray(data[CUE], np.float32).reshape(*elapsed.shape, 1)
  cards = np.asarray(data['vector'], np.float32)
  labels = np.zeros_like(cards)
  labels[:, delay:] = cards[:, :cards.shape[1] - delay]
  return elapsed >= delay, labels


def label_accuracy(prediction: np.ndarray, labels: np.ndarray) -> float:
  """`sign_accuracy` for ±1 labels `[M, 1]`; for one-hot labels `[M, C]`, the share of rows whose
  largest prediction is the labelled class."""
  prediction, labels = np.asarray(prediction), np.asarray(labels)
  if labels.shape[-1] == 1:
    return sign_accuracy(prediction, labels)
  return float(np.mean(np.argmax(prediction, -1) == np.argmax(labels, -1)))


def recall_accuracy(world_model, params, data: dict, delays, key: jax.Array,
                    probe_steps: int = 1000,
                    test_fraction: float = 0.25) -> dict[int, float | None]:
  """`{d: accuracy}` of probes from the filtered features to `recall_labels(data, d)` (`data`:
  `[N, T]` streams with obs keys, `action`, `is_first` and the task's truth); None where the
  train or test envs hold no such step."""
  _truth_key(data)  # a clear error before the features are computed
  features, index = probes.latent_features(world_model, params, data, (probes.FILTERED,),
                                           key)[probes.FILTERED]
  envs = data['is_first'].shape[0]
  held = max(1, round(envs * test_fraction))
  test = index[:, 0] >= envs - held
  scores: dict[int, float | None] = {}
  for delay in delays:
    at, labels = recall_labels(data, int(delay))
    at, labels = at[index[:, 0], index[:, 1]], labels[index[:, 0], index[:, 1]]
    if not (at & ~test).any() or not (at & test).any():
      scores[int(delay)] = None
      continue
    prediction = probes.fit_probe(features[at & ~test], labels[at & ~test], features[at & test],
                                  jax.random.fold_in(key, int(delay)), steps=probe_steps)
    scores[int(delay)] = label_accuracy(prediction, labels[at & test])
  return scores


def answer_steps(data: dict, span: int) -> tuple[np.ndarray, np.ndarray]:
  """The steps whose next action is scored, and the action that earns there: `(at [N, T], right
  [N, T])`. CueRecall: the query step (`span` steps into an episode), the action naming the cue;
  RepeatPrevious: every step at least `span` in but an episode's last, the suit `span` back."""
  elapsed = elapsed_steps(data['is_first'])
  if _truth_key(data) == CUE:
    return elapsed == span, (np.asarray(data[CUE])[..., 0] > 0).astype(np.int64)
  return ((elapsed >= span) & ~np.asarray(data['is_last'], bool),
          np.argmax(np.asarray(data[TARGET]), -1))


def reward_choice_accuracy(world_model, params, data: dict, span: int, key: jax.Array,
                           chunk: int = 4) -> dict[str, float | None]:
  """Whether the world model knows what the answer is worth, which is what the actor learns from.

  `observed`: the share of steps with a nonzero reward (the answers) whose predicted reward, from
  the filtered features, has the reward's sign. `imagined`: from the filtered state at each query
  step (`answer_steps`: on CueRecall `span` steps into an episode), one imagined step per action;
  the share where the action that earns gets the highest predicted reward (ties as in
  `choice_accuracy`). `data` as for `recall_accuracy`; episodes count from the streams' first
  step. None where no such step exists."""
  dynamics = world_model.dynamics
  obs = {k: jnp.asarray(v) for k, v in data.items()}
  num_envs = obs['is_first'].shape[0]
  is_first = obs['is_first'].at[:, 0].set(True)
  actions = obs['action'].shape[-1]
  query, right = answer_steps(data, span)

  @jax.jit
  def score(part, first, key):
    observe_key, imagine_key = jax.random.split(key)
    _, features, _, _ = dynamics.observe(params['dynamics'], dynamics.initial(first.shape[0]),
                                         world_model.encode(params, part), part['action'],
                                         first, observe_key)
    reward = world_model.reward(params, features)
    # Every dynamics (rssm, transformer, ssm) has start_states; the Transformer's holds its context.
    starts = dynamics.start_states(params['dynamics'], features, part['action'], first)
    imagined = []
    for action in range(actions):
      onehot = jnp.broadcast_to(jax.nn.one_hot(action, actions), (first.size, actions))
      carry, _ = dynamics.img_step(params['dynamics'], starts, onehot, imagine_key)
      imagined.append(world_model.reward(params, dynamics.features(carry)))
    return reward, jnp.stack(imagined, -1).reshape(*first.shape, actions)

  predicted, answers, values, rights = [], [], [], []
  for start in range(0, num_envs, chunk):
    part = jax.tree.map(lambda x, s=start: x[s:s + chunk], obs)
    reward, imagined = map(np.asarray, score(part, is_first[start:start + chunk],
                                             jax.random.fold_in(key, start)))
    true = np.asarray(part['reward'])
    predicted.append(reward[true != 0])
    answers.append(true[true != 0])
    at = query[start:start + chunk]
    values.append(imagined[at])
    rights.append(right[start:start + chunk][at])
  answers, rights = np.concatenate(answers), np.concatenate(rights)
  return {'observed': sign_accuracy(np.concatenate(predicted), answers) if answers.size else None,
          'imagined': choice_accuracy(np.concatenate(values), rights) if rights.size else None}


def choice_accuracy(values: np.ndarray, right: np.ndarray) -> float:
  """Share of rows of `values [M, A]` (a predicted value per action) whose `right [M]` action is
  valued above every other; where n actions tie for the top with it, the row counts 1 / n (what
  picking among them at random earns: a model that values every action alike scores 1 / A)."""
  values, right = np.asarray(values, np.float64), np.asarray(right)
  top = values.max(1, keepdims=True)
  own = values[np.arange(len(right)), right]
  return float(np.mean(np.where(own == top[:, 0], 1.0 / np.sum(values == top, 1), 0.0)))


# ----------------------------------------------------------------------------- trained runs


def probe_run(workdir: str, steps: int = 1000, num_envs: int = 8, probe_steps: int = 1000,
              seed: int = 12345) -> dict:
  """Recall accuracy at delays 0 and L (k) of every seed of the run in `workdir` (a CueRecall or
  RepeatPrevious run of experiments/memory.py), from `steps` steps of `num_envs` envs acting with
  that seed's policy; writes and returns `<workdir>/memory_probe.json`."""
  loaded = common.load_run(workdir)
  config, agent, _ = loaded
  span = memory.span(config.task)
  step, state, _, _ = common.restore(workdir, loaded)
  policy = jax.jit(agent.policy_step)
  key = jax.random.key(seed)
  accuracy = []
  for k in range(config.num_seeds):
    seed_state = jax.tree.map(lambda x, k=k: x[k], state) if config.num_seeds > 1 else state
    act = lambda carry, obs, key, s=seed_state: policy(s, carry, obs, key)  # noqa: E731
    data = probes.collect(act, agent.initial_policy_carry, agent.env_action, config, steps,
                          num_envs, seed + k)
    scores = recall_accuracy(agent.world_model, seed_state.params['world_model'], data,
                             (0, span), jax.random.fold_in(key, k), probe_steps)
    accuracy.append({str(d): v for d, v in scores.items()})
  result = {'task': config.task, 'span': span, 'step': int(step), 'seeds': config.num_seeds,
            'collect_steps': steps, 'collect_envs': num_envs, 'accuracy': accuracy}
  with open(os.path.join(workdir, PROBE_FILE), 'w') as f:
    json.dump(result, f, indent=2)
  return result


# ----------------------------------------------------------------------------- world model only


def random_streams(env, num_envs: int, steps: int, seed: int) -> dict:
  """`[N, T]` streams of `num_envs` copies of the JAX env `env` under uniformly random actions,
  stepped in one jitted scan: obs keys, `action` (one-hot, the action that led to the step; zero
  at episode starts), `reward`, `is_first`, `is_last`, `is_terminal` and `truth/<name>`."""
  vectorized = jax_envs.Vectorized(env, num_envs)
  actions = env.act_space.num_actions

  def run(key):
    state, out = vectorized.reset(jax_envs.env_keys(seed, num_envs))
    first = {**out, **_truth(vectorized, state), 'action': jnp.zeros((num_envs, actions))}

    def body(state, key):
      action = jax.random.randint(key, (num_envs,), 0, actions)
      state, out = vectorized.step(state, action)
      onehot = jax.nn.one_hot(action, actions) * ~out['is_first'][:, None]
      return state, {**out, **_truth(vectorized, state), 'action': onehot}

    _, rest = jax.lax.scan(body, state, jax.random.split(key, steps - 1))
    stream = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), stream)

  return jax.tree.map(np.asarray, jax.jit(run)(jax.random.key(seed)))


def _truth(vectorized, state) -> dict:
  return {f'truth/{name}': value for name, value in vectorized.truth(state).items()}


def train_world_model(agent: Agent, data: dict, updates: int, batch_size: int, length: int,
                      key: jax.Array, chunk: int = 50) -> tuple[dict, dict]:
  """Trains `agent`'s world model alone for `updates` steps (a multiple of `chunk`, the updates
  of one jitted call; rounded down) on sequences `[B, T]` sampled from `data`
  (`random_streams`), through the replay buffer; returns the parameters and
  `{'seconds_per_update', 'compile_seconds', 'loss'}` (the last chunk's mean loss)."""
  fields = {k: v for k, v in data.items() if not k.startswith('truth/')}
  spec = {k: (v.shape[2:], v.dtype) for k, v in fields.items()}
  num_envs, steps = data['is_first'].shape
  buffer = add_many(replay.init(spec, num_envs, num_envs * steps),
                    jax.tree.map(lambda x: jnp.swapaxes(jnp.asarray(x), 0, 1), fields))
  model, tx = agent.world_model, agent.optimizers['world_model']
  chunk = max(1, min(chunk, updates))
  rounds = max(1, updates // chunk)
  init_key, key = jax.random.split(key)
  params = model.init(init_key)
  opt_state = tx.init(params)

  @jax.jit
  def train(params, opt_state, key):
    def step(carry, key):
      params, opt_state = carry
      sample_key, loss_key = jax.random.split(key)
      batch = replay.sample(buffer, sample_key, batch_size, length)
      (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch, loss_key)
      params, opt_state, _ = agent.apply_gradients('world_model', grads, opt_state, params)
      return (params, opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               jax.random.split(key, chunk))
    return params, opt_state, jnp.mean(losses)

  start = time.perf_counter()
  compiled = train.lower(params, opt_state, key).compile()
  compile_seconds = time.perf_counter() - start
  start, loss = time.perf_counter(), None
  for index in range(rounds):
    params, opt_state, loss = compiled(params, opt_state, jax.random.fold_in(key, index))
  loss = float(loss)
  seconds = time.perf_counter() - start
  return params, {'seconds_per_update': seconds / (rounds * chunk),
                  'compile_seconds': compile_seconds, 'loss': loss}


def world_model_tier(config: ml_collections.ConfigDict, updates: int = 1000, num_envs: int = 16,
                     steps: int | None = None, delays=None, probe_steps: int = 1000,
                     seed: int = 0, out_dir: str | None = None) -> dict:
  """The world-model-only tier on a memory task of `config` (e.g. experiments/memory.py's, any
  arm but random): random-policy streams (`steps` per env, default 40 episodes), `updates`
  world-model updates of `run.batch_size x run.batch_length`, then `recall_accuracy` at `delays`
  (default 0, L/2, L) on as many fresh random-policy steps. Writes `memory_world_model.json` to
  `out_dir` if given; returns the result with its measured seconds."""
  config = configs.resolve(config)
  validation.validate(config)
  env = jax_envs.resolve(config.task.removeprefix('jax:'))
  span = memory.span(config.task)
  steps = steps or 40 * env.episode_length
  delays = tuple(delays) if delays is not None else (0, span // 2, span)
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  start = time.perf_counter()
  data = random_streams(env, num_envs, steps, seed)
  params, cost = train_world_model(agent, data, updates, config.run.batch_size,
                                   config.run.batch_length, jax.random.key(seed))
  # As many fresh steps, in 4x the envs: shorter streams keep the filtered pass over each small.
  probe_data = random_streams(env, 4 * num_envs, max(span + 2, steps // 4), seed + 1)
  probe_start = time.perf_counter()
  accuracy = recall_accuracy(agent.world_model, params, probe_data, delays,
                             jax.random.key(seed + 2), probe_steps)
  reward = reward_choice_accuracy(agent.world_model, params, probe_data, span,
                                  jax.random.key(seed + 3))
  result = {'task': config.task, 'dynamics': config.model.dynamics, 'context': config.model.context
            if config.model.dynamics == 'transformer' else None, 'span': span,
            'updates': updates, 'batch_size': config.run.batch_size,
            'batch_length': config.run.batch_length, 'envs': num_envs, 'steps': steps,
            'seed': seed, 'accuracy': {str(d): v for d, v in accuracy.items()},
            'reward_accuracy': reward,
            **cost, 'probe_seconds': time.perf_counter() - probe_start,
            'total_seconds': time.perf_counter() - start}
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, TIER_FILE), 'w') as f:
      json.dump(result, f, indent=2)
  return result
