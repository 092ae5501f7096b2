"""Scale-out: 8 simulated devices equal 1, FSDP rules, a tiny run on 8 devices, two processes,
vmapped seeds equal separate runs, and no implicit host<->device copies in the loop."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from dreamerjax.agents.agent import Agent
from dreamerjax.analysis import benchmark
from dreamerjax.run import common, configs, logger, parallel, train
from tests.conftest import REPOSITORY_ROOT, TEST_XLA_FLAGS
from tests.test_train import debug_config

# Shared by the subprocess snippets: a debug-size agent on 5-d vector observations, 3 actions.
AGENT_SNIPPET = '''
    import jax, numpy as np
    jax.config.update('jax_default_matmul_precision', 'highest')
    from dreamerjax.analysis import benchmark
    from dreamerjax.run import configs, parallel
    from dreamerjax.agents.agent import Agent
    config = configs.base()
    config.size = 'debug'
    configs.update(config, configs.DEBUG)
    config = configs.resolve(config)
    SPACE = {'vector': ((5,), np.float32)}
    agent = Agent(config, SPACE, True, 3)
'''


def debug_agent(actions=3):
  config = configs.base()
  config.size = 'debug'
  configs.update(config, configs.DEBUG)
  return Agent(configs.resolve(config), {'vector': ((5,), np.float32)}, True, actions)


def test_train_step_on_8_devices_matches_1_device(run_with_devices):
  # The same global batch of 8 sequences: whole on one device, 1 per device on 8 devices, and on
  # 8 devices with FSDP rules sharding some kernels (and their Adam moments) over `data`.
  # Tolerance after 3 steps: rtol 1e-5, atol 1e-6 (measured: at most 1e-7 apart).
  output = run_with_devices(AGENT_SNIPPET + '''
    from jax.sharding import PartitionSpec as P
    batch = jax.device_get(benchmark.synthetic_batch(SPACE, 8, 8, 3))
    RULES = (('(actor|critic|cont|reward)/params/MLP_0/.*kernel$', ('data', None)),
             ('dynamics/params/gru_hidden/kernel$', (None, 'data', None)))

    # FSDP shards Adam's moments like their parameters, so it needs them per leaf
    # (`optim.flat=False`, what `configs.resolve` picks when `parallel.param_rules` are set).
    flat, config.optim.flat = agent, False
    leafwise = Agent(config, SPACE, True, 3)

    def train(devices, rules=()):
      agent = leafwise if rules else flat
      layout = parallel.Layout(parallel.make_mesh(devices))
      shardings = parallel.state_shardings(
          layout, jax.eval_shape(agent.init, jax.random.key(0)), rules)
      state = jax.jit(lambda: agent.init(jax.random.key(0)), out_shardings=shardings)()
      step = jax.jit(agent.train_step, in_shardings=(shardings, layout.per_env),
                     out_shardings=(shardings, layout.replicated), donate_argnums=0)
      data = layout.put(batch)
      assert data['vector'].sharding.spec == P('data') and len(data['vector'].devices()) == devices
      losses = []
      for _ in range(3):
        state, metrics = step(state, data)
        losses.append(parallel.to_host(metrics)['wm/loss'])
      program = step.lower(state, data).compile().as_text()
      return state, np.array(losses), program

    reference, reference_losses, _ = train(1)
    for name, devices, rules in (('dp', 8, ()), ('fsdp', 8, RULES)):
      # The flat optimizer (the default) and the per-leaf one take the same steps.
      state, losses, program = train(devices, rules)
      np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
      for want, got in zip(jax.tree.leaves(parallel.to_host(reference.params)),
                           jax.tree.leaves(parallel.to_host(state.params))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      assert 'all-reduce' in program  # the gradient mean over devices
      kernel = state.params['world_model']['dynamics']['params']['gru_hidden']['kernel']
      moment = state.opt_state['world_model'][1][0].mu
      moment = moment['dynamics']['params']['gru_hidden']['kernel'] if rules else moment
      print(name, kernel.sharding.spec, moment.sharding.spec, moment.ndim,
            kernel.addressable_shards[0].data.shape)
    print('losses', reference_losses)
  ''', device_count=8)
  assert 'dp P() P() 1 (2, 128, 32)' in output  # replicated, the moments one flat vector
  assert "fsdp P(None, 'data', None) P(None, 'data', None) 3 (2, 16, 32)" in output


def test_tiny_run_on_8_devices(run_with_devices, tmp_path):
  workdir = tmp_path / 'run'
  output = run_with_devices(f'''
    import jax
    from jax.sharding import PartitionSpec as P
    from dreamerjax.run import common, parallel, train
    from tests.test_train import debug_config
    config = debug_config(steps=160, envs=8, batch_size=8, log_every=40)
    config.run.transfer_guard = True
    summary = train.run(config, {str(workdir)!r})
    print('updates', summary['updates'])
    step, state, replay_state, meta = common.restore({str(workdir)!r})
    vector = replay_state.data['vector']
    print('replay', vector.shape, vector.sharding.spec, len(vector.devices()))
    print('state', state.params['actor']['params']['Dense_0']['kernel'].sharding.spec)
    print('restored', step, meta['counters']['updates'])
  ''', device_count=8)
  assert "replay (8, 1, 500, 4) P('data',) 8" in output  # 8 shards x 1 env x 500 steps
  assert 'state P()' in output
  updates = int(output.split('updates ')[1].split()[0])
  assert updates > 0 and f'restored 160 {updates}' in output
  rows = logger.read_metrics(str(workdir))
  assert max(row['step'] for row in rows) == 160
  assert any('wm/loss' in row for row in rows) and any('episode/return' in row for row in rows)


def test_transfer_guard_covers_the_steady_state_loop(tmp_path, monkeypatch):
  # Acting and training (after the prefill) under jax.transfer_guard('disallow') work...
  config = debug_config(steps=120, log_every=40)
  config.run.transfer_guard = True
  assert train.run(config, str(tmp_path / 'clean'))['updates'] > 0
  # ...and the guard is really there: an env step handed to the policy as a numpy value (an
  # implicit host->device copy) stops the run once the policy acts.
  put, leaked = parallel.Layout.put, []

  def leaky_put(self, tree, sharding=None):
    if isinstance(tree, np.generic):  # only the env step given to the policy is a scalar
      leaked.append(int(tree))
      return tree
    return put(self, tree, sharding)

  monkeypatch.setattr(parallel.Layout, 'put', leaky_put)
  with pytest.raises(Exception, match='Disallowed host-to-device transfer'):
    train.run(config, str(tmp_path / 'leaky'))
  assert leaked == [config.run.prefill]  # the first policy step, after the prefill


def test_vmapped_seeds_train_like_separate_seeds():
  # K=4 agents as one vmapped program vs 4 separate programs, each seed on its own batch.
  # Tolerance after 3 steps: rtol 1e-5, atol 1e-5, a tenth of one Adam step of the world model
  # (lr 1e-4). Measured with seed keys from 10, 20 and 30 and both categorical samplers (the
  # exponential race and the inverse CDF): weights at most 1e-7 apart but for a single weight in
  # some runs, up to 2.8e-6 (the two programs round differently, and 3 Adam steps grow it).
  # A seed trained on another seed's batch ends 6e-4 away.
  agent = debug_agent()
  seeds = 4
  batches = [jax.device_get(benchmark.synthetic_batch(agent.obs_space, 4, 8, 3, seed=k))
             for k in range(seeds)]
  layout = parallel.Layout(parallel.make_mesh(1), seeds)
  init = layout.over_seeds(agent.init)
  state = jax.jit(lambda: init(layout.seed_keys(10)))()
  step = jax.jit(layout.over_seeds(agent.train_step), donate_argnums=0)
  stacked = jax.tree.map(lambda *x: np.stack(x), *batches)
  for _ in range(3):
    state, metrics = step(state, stacked)
  together = parallel.to_host(state.params)
  single = jax.jit(agent.train_step, donate_argnums=0)
  for k in range(seeds):
    alone = agent.init(jax.random.key(10 + k))
    for _ in range(3):
      alone, alone_metrics = single(alone, batches[k])
    np.testing.assert_allclose(metrics['wm/loss'][k], alone_metrics['wm/loss'], rtol=1e-5)
    for want, got in zip(jax.tree.leaves(parallel.to_host(alone.params)),
                         jax.tree.leaves(together), strict=True):
      np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)


def test_seeds_in_one_run_equal_separate_runs_and_resume(tmp_path):
  def config(seed, seeds, steps=140):
    config = debug_config(steps=steps, log_every=20)
    config.seed, config.num_seeds = seed, seeds
    config.run.transfer_guard = True
    return config

  together = str(tmp_path / 'together')
  summary = train.run(config(3, 2), together)
  rows = logger.read_metrics(together)
  _, state, replay_state, _ = common.restore(together)
  assert replay_state.data['vector'].shape[:2] == (2, 1)  # [seeds, shards, envs, capacity, 4]
  for k in range(2):
    alone = str(tmp_path / f'alone{k}')
    train.run(config(3 + k, 1), alone)
    # Same envs, random prefill actions, policy and updates: the same episodes...
    episodes = [(r['step'], r['episode/return']) for r in rows
                if r.get('seed') == k and 'episode/return' in r]
    assert episodes and episodes == [(r['step'], r['episode/return'])
                                     for r in logger.read_metrics(alone) if 'episode/return' in r]
    # ...and the same parameters (tolerance rtol 1e-4, atol 1e-5 after 44 updates).
    _, alone_state, _, _ = common.restore(alone)
    for want, got in zip(jax.tree.leaves(parallel.to_host(alone_state.params)),
                         jax.tree.leaves(parallel.to_host(state.params)), strict=True):
      np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5)
  # Per-seed rows carry `seed`; run/ rows do not; every line has a step.
  assert {r['seed'] for r in rows if 'wm/loss' in r} == {0, 1}
  assert all('seed' not in r for r in rows if 'run/updates' in r)
  assert all('step' in r for r in rows)
  # A run of several seeds resumes like any run.
  resumed = train.run(config(3, 2, steps=160), together)
  assert resumed['env_step'] == 160 and resumed['updates'] > summary['updates']


def test_param_rule_that_does_not_divide_is_rejected(run_with_devices):
  output = run_with_devices('''
      from dreamerjax.run import train
      from tests.test_train import debug_config
      config = debug_config(envs=3, batch_size=3)
      config.parallel.param_rules = (('actor/.*kernel$', ('data', None)),)
      try:
        train.run(config, '/tmp/never-created-dreamerjax')
      except ValueError as error:
        print('ERROR', error)
      ''', device_count=3)
  assert re.search(r'splits dimension 0 of params/actor/params/Dense_0/kernel \(\d+, 2\) into 3 '
                   'parts, which does not divide it', output)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


PROCESS_SNIPPET = '''
    import json, sys
    from dreamerjax.run import common, parallel, train
    from tests.test_train import debug_config
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    parallel.initialize_distributed(f'127.0.0.1:{port}', 2, process_id)
    import jax
    config = debug_config(steps=120, envs=4, batch_size=4, log_every=40)
    summary = train.run(config, workdir)
    step, state, replay_state, meta = common.restore(workdir)
    again = train.run(config, workdir)  # resumes collectively; nothing left to do
    print('RESULT', json.dumps({
        'devices': [jax.device_count(), jax.local_device_count()],
        'checksum': summary['param_checksum'], 'updates': summary['updates'],
        'restored_step': step, 'restored_checksum': parallel.checksum(state.params),
        'replay_shape': list(replay_state.data['vector'].shape),
        'episodes': summary['episodes'], 'again': [again['env_step'], again['updates']]}))
'''


def test_two_processes_train_one_run(tmp_path):
  # 2 processes x 2 simulated CPU devices, gloo collectives, coordinator on localhost.
  workdir = tmp_path / 'run'
  environment = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPOSITORY_ROOT),
                     XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {TEST_XLA_FLAGS}')
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, '-c', textwrap.dedent(PROCESS_SNIPPET), str(index), str(port),
       str(workdir)], env=environment, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for index in range(2)]
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=600)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, output in zip(processes, outputs, strict=True):
    assert process.returncode == 0, output[-5000:]
  results = [json.loads(output.split('RESULT ')[1].splitlines()[0]) for output in outputs]
  first, second = results
  assert first['devices'] == [4, 2]
  assert first['updates'] > 0
  # Both processes end with the same parameters, and the one checkpoint restores them.
  assert first['checksum'] == second['checksum']
  assert first['restored_checksum'] == first['checksum'] == second['restored_checksum']
  assert first['restored_step'] == 120 and first['replay_shape'][:2] == [4, 1]
  assert first['again'] == second['again'] == [120, first['updates']]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['120']
  # Only process 0 wrote logs, with the episodes of both processes' envs (gathered, so both
  # count them all).
  rows = logger.read_metrics(str(workdir))
  assert max(row['step'] for row in rows) == 120
  assert sum('run/updates' in row for row in rows) == 3  # log steps 40, 80, 120
  episodes = sum('episode/return' in row for row in rows)
  assert episodes > 0 and first['episodes'] == second['episodes'] == episodes
