"""Sweep expansion, sharding, run status, launching, and one tiny real sweep end to end."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from dreamerjax.run import sweeps
from tests.conftest import REPOSITORY_ROOT

SWEEP_DIR = REPOSITORY_ROOT / 'experiments' / 'sweeps'


def write_run(workdir, steps, last_step=None, truncated=False):
    """A run folder with config.json (run.steps) and, if ``last_step``, metrics up to it."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump({'task': 'CartPole-v1', 'seed': 0, 'run': {'steps': steps}}, f)
    if last_step is not None:
        with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
            f.write(json.dumps({'step': last_step // 2, 'episode/return': 1.0}) + '\n')
            f.write(json.dumps({'step': last_step, 'wm/loss': 1.0}) + '\n')
            if truncated:
                f.write('{"step": 99999999, "wm/lo')


def small_sweep(**changes):
    sweep = {'suite': 'experiments/classic.py', 'base': 'size=tiny,debug',
             'grid': {'task': ['CartPole-v1', 'Acrobot-v1'], 'seed': [10, 2, 0]},
             'overrides': {'run.steps': 800, 'config.env.max_episode_steps': 45}}
    sweep.update(changes)
    return sweep


def run_script(*arguments, timeout=120):
    return subprocess.run([sys.executable, *arguments], cwd=REPOSITORY_ROOT, capture_output=True,
                          text=True, timeout=timeout)


# Expansion ------------------------------------------------------------------------------------


def test_run_names():
    assert sweeps.run_name({'task': 'Pong-v5', 'seed': 0}) == 'Pong-v5__seed0'
    assert sweeps.run_name({'seed': 3, 'variant': 'dreamerv1', 'task': 'CartPole-v1'}) == \
        'CartPole-v1__dreamerv1__seed3'
    assert sweeps.run_name({'size': '12m', 'debug': True}) == 'size12m__debug'
    assert sweeps.run_name({'task': 'a/b c'}) == 'a-b-c'
    assert sweeps.format_options({'seed': 1, 'debug': True, 'task': 'X-v1', 'size': 's'}) == \
        'task=X-v1,size=s,seed=1,debug'


def test_expand_names_order_and_commands(tmp_path):
    runs = sweeps.expand(small_sweep(), str(tmp_path), python='python3')
    assert [run.name for run in runs] == [
        'Acrobot-v1__seed0', 'CartPole-v1__seed0', 'Acrobot-v1__seed2', 'CartPole-v1__seed2',
        'Acrobot-v1__seed10', 'CartPole-v1__seed10']
    assert [run.index for run in runs] == list(range(6))
    first = runs[0]
    assert first.options == {'size': 'tiny', 'debug': True, 'task': 'Acrobot-v1', 'seed': 0}
    assert first.workdir == str(tmp_path / 'Acrobot-v1__seed0')
    assert first.command == (
        'python3', 'scripts/train.py', '--config=experiments/classic.py:task=Acrobot-v1,size=tiny,'
        'seed=0,debug', f'--workdir={tmp_path / "Acrobot-v1__seed0"}',
        '--config.env.max_episode_steps=45', '--config.run.steps=800')
    # Same sweep, same plan, whatever the grid's order.
    reordered = small_sweep(grid={'seed': [0, 10, 2], 'task': ['Acrobot-v1', 'CartPole-v1']})
    assert sweeps.expand(reordered, str(tmp_path), 'python3') == runs
    assert sweeps.budget_override(small_sweep()) == 800


def test_shard_partitions_the_runs(tmp_path):
    runs = sweeps.expand(small_sweep(), str(tmp_path))
    shards = [sweeps.shard(runs, index, 4) for index in range(4)]
    assert [[run.index for run in shard] for shard in shards] == [[0, 4], [1, 5], [2], [3]]
    assert sweeps.shard(runs, 0, 1) == runs
    with pytest.raises(ValueError):
        sweeps.shard(runs, 4, 4)


def test_invalid_sweeps(tmp_path):
    with pytest.raises(ValueError, match='unknown experiment option'):
        sweeps.expand(small_sweep(grid={'tsk': ['a']}), str(tmp_path))
    with pytest.raises(ValueError, match='both named'):
        sweeps.expand(small_sweep(grid={'task': ['a b', 'a-b']}), str(tmp_path))
    with pytest.raises(ValueError, match='without values'):
        sweeps.expand(small_sweep(grid={'task': []}), str(tmp_path))
    with pytest.raises(ValueError, match='needs keys'):
        sweeps.validate_sweep({'grid': {'seed': [0]}})


def test_sweep_files():
    import envpool

    known = set(envpool.list_all_envs())
    expected = {'atari100k.py': (130, 'experiments/atari100k.py'),
                'dmc_proprio.py': (54, 'experiments/dmc_proprio.py'),
                'variants_cartpole.py': (9, 'experiments/classic.py'),
                'classic_debug.py': (4, 'experiments/classic.py'),
                'dmc_cpu_batch4.py': (6, 'experiments/dmc_proprio.py')}
    for name, (count, suite) in expected.items():
        module = SWEEP_DIR / name
        assert 'python scripts/sweep.py' in module.read_text(), name  # launch command in docstring
        sweep = sweeps.load_sweep(str(module))
        runs = sweeps.expand(sweep, '/tmp/unused')
        assert len(runs) == count and sweep['suite'] == suite, name
        assert {run.options['task'] for run in runs} <= known, name
    atari = sweeps.load_sweep(str(SWEEP_DIR / 'atari100k.py'))
    assert len(atari['grid']['task']) == 26 and 'Jamesbond-v5' in atari['grid']['task']
    assert 'PrivateEye-v5' in atari['grid']['task'] and 'UpNDown-v5' in atari['grid']['task']
    dmc = sweeps.load_sweep(str(SWEEP_DIR / 'dmc_proprio.py'))
    assert 'BallInCupCatch-v1' in dmc['grid']['task'] and 'AcrobotSwingup-v1' in dmc['grid']['task']
    # The sweeps cover the task lists of their suite files.
    for sweep, attribute in ((atari, 'GAMES'), (dmc, 'TASKS')):
        suite = REPOSITORY_ROOT / sweep['suite']
        if suite.exists():
            namespace = {}
            exec(compile(suite.read_text(), str(suite), 'exec'), namespace)
            assert sorted(sweep['grid']['task']) == sorted(namespace[attribute])
    variants = sweeps.load_sweep(str(SWEEP_DIR / 'variants_cartpole.py'))
    assert variants['grid']['variant'] == ['dreamerv1', 'dreamerv2', 'dreamerv3']
    # The batch-4 DMC sweep is the make-train preset but for its batch and ratio.
    preset = sweeps.load_sweep(str(SWEEP_DIR / 'dmc_cpu.py'))['overrides']
    batch4 = sweeps.load_sweep(str(SWEEP_DIR / 'dmc_cpu_batch4.py'))['overrides']
    changed = {key for key in preset.keys() | batch4.keys() if preset.get(key) != batch4.get(key)}
    assert changed == {'run.batch_size', 'run.train_ratio'}
    assert (batch4['run.batch_size'], batch4['run.train_ratio']) == (4, 128.0)


# Status ---------------------------------------------------------------------------------------


def test_run_status(tmp_path):
    assert sweeps.run_status(str(tmp_path / 'missing')) == 'new'
    os.makedirs(tmp_path / 'empty')
    assert sweeps.run_status(str(tmp_path / 'empty')) == 'new'
    write_run(str(tmp_path / 'config_only'), 400)
    assert sweeps.run_status(str(tmp_path / 'config_only')) == 'partial'
    write_run(str(tmp_path / 'halfway'), 400, last_step=200, truncated=True)
    assert sweeps.run_status(str(tmp_path / 'halfway')) == 'partial'
    assert sweeps.run_progress(str(tmp_path / 'halfway')) == (200, 400)
    write_run(str(tmp_path / 'done'), 400, last_step=404)
    assert sweeps.run_status(str(tmp_path / 'done')) == 'finished'
    # A sweep that raises run.steps makes a finished run partial again.
    assert sweeps.run_status(str(tmp_path / 'done'), steps=800) == 'partial'


def test_write_plan(tmp_path):
    sweep = small_sweep()
    runs = sweeps.expand(sweep, str(tmp_path))
    path = sweeps.write_plan(str(tmp_path), 'x.py', sweep, runs, process_count=2)
    with open(path) as f:
        plan = json.load(f)
    assert plan['sweep'] == 'x.py' and plan['base'] == {'size': 'tiny', 'debug': True}
    assert [run['name'] for run in plan['runs']] == [run.name for run in runs]
    assert [run['process'] for run in plan['runs']] == [0, 1, 0, 1, 0, 1]
    assert plan['runs'][0]['command'] == runs[0].command_line


# Launching (a stand-in trainer) ---------------------------------------------------------------

FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys
    workdir, reach, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(workdir, exist_ok=True)
    json.dump({'run': {'steps': 100}}, open(os.path.join(workdir, 'config.json'), 'w'))
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps({'step': reach, 'episode/return': 1.0}) + '\\n')
    print('fake trainer stdout')
    print('fake trainer stderr', file=sys.stderr)
    sys.exit(code)
''')


def fake_run(root, index, name, reach, code):
    workdir = os.path.join(root, name)
    return sweeps.Run(index, name, {}, workdir,
                      (sys.executable, '-c', FAKE_TRAINER, workdir, str(reach), str(code)))


def test_launch_skips_resumes_and_reports(tmp_path):
    root = str(tmp_path)
    write_run(os.path.join(root, 'done'), 100, last_step=100)
    write_run(os.path.join(root, 'resumed'), 100, last_step=50)
    runs = [fake_run(root, 0, 'done', 100, 0), fake_run(root, 1, 'resumed', 100, 0),
            fake_run(root, 2, 'crashes', 10, 3), fake_run(root, 3, 'stops_early', 60, 0),
            fake_run(root, 4, 'new', 100, 0)]
    lines = []
    failures = sweeps.launch(runs, workers=2, poll_seconds=0.05, echo=lines.append)
    assert 'skip done (finished)' in lines
    assert any(line.startswith('start resumed (partial)') for line in lines)
    assert not os.path.exists(os.path.join(root, 'done', 'train.log'))  # never started
    assert [(f.run.name, f.returncode) for f in failures] == [('crashes', 3), ('stops_early', 0)]
    assert failures[0].reason == 'exit code 3'
    assert failures[1].reason == 'exited at step 60 of 100'
    log = pathlib.Path(failures[0].log).read_text()
    assert 'fake trainer stdout' in log and 'fake trainer stderr' in log and log.startswith('===')
    for name in ('resumed', 'new'):
        assert sweeps.run_status(os.path.join(root, name)) == 'finished'


def test_detect_process_off_a_tpu_slice():
    assert sweeps.detect_process() == (0, 1)


# Command line ---------------------------------------------------------------------------------


def test_cli_dry_run_and_sharding(tmp_path):
    root = tmp_path / 'sweep'
    write_run(str(root / 'CartPole-v1__seed0'), 400, last_step=400)
    write_run(str(root / 'Acrobot-v1__seed0'), 400, last_step=100)
    result = run_script('scripts/sweep.py', '--sweep=experiments/sweeps/classic_debug.py',
                        f'--root={root}', '--dry_run')
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'Acrobot-v1__seed0  [partial (100/400)]' in out
    assert 'CartPole-v1__seed0  [finished]' in out and 'CartPole-v1__seed1  [new]' in out
    assert '--config=experiments/classic.py:task=Acrobot-v1,seed=1,debug' in out
    assert not (root / 'sweep.json').exists()
    result = run_script('scripts/sweep.py', '--sweep=experiments/sweeps/classic_debug.py',
                        f'--root={root}', '--dry_run', '--process_index=1', '--process_count=2')
    assert 'process 1 of 2 takes 2' in result.stdout
    assert 'CartPole-v1__seed0' in result.stdout and 'CartPole-v1__seed1' in result.stdout
    assert 'Acrobot' not in result.stdout.split('root')[-1]


def test_cli_reports_failures(tmp_path):
    fake_python = tmp_path / 'python'
    fake_python.write_text('#!/bin/sh\necho "trainer failed: $*" >&2\nexit 3\n')
    fake_python.chmod(0o755)
    result = run_script('scripts/sweep.py', '--sweep=experiments/sweeps/classic_debug.py',
                        f'--root={tmp_path / "sweep"}', '--workers=2', f'--python={fake_python}')
    assert result.returncode == 1
    assert '4 failed:' in result.stdout
    log = tmp_path / 'sweep' / 'Acrobot-v1__seed0' / 'train.log'
    assert f'log: {log}' in result.stdout
    assert 'trainer failed: scripts/train.py' in log.read_text()
    assert (tmp_path / 'sweep' / 'sweep.json').exists()


def test_end_to_end_classic_debug_sweep(tmp_path):
    """The real trainer on 2 tasks x 2 seeds (debug), then the table and the plot."""
    root = tmp_path / 'classic_debug'
    sweep = ('scripts/sweep.py', '--sweep=experiments/sweeps/classic_debug.py', f'--root={root}')
    result = run_script(*sweep, '--workers=2', timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ['Acrobot-v1__seed0', 'Acrobot-v1__seed1', 'CartPole-v1__seed0', 'CartPole-v1__seed1']
    for name in names:
        assert sweeps.run_status(str(root / name)) == 'finished', name
        assert 'Done' in (root / name / 'train.log').read_text()
        assert (root / name / 'checkpoints' / '400').is_dir()

    started = time.monotonic()
    result = run_script(*sweep, '--workers=2')
    assert result.returncode == 0 and result.stdout.count('(finished)') == 4, result.stdout
    assert time.monotonic() - started < 60

    result = run_script('scripts/table.py', f'--root={root}')
    assert result.returncode == 0, result.stderr
    table = (root / 'table.md').read_text()
    for task in ('Acrobot-v1', 'CartPole-v1'):
        row = next(line for line in table.splitlines() if line.startswith(f'| {task} |'))
        assert row.endswith('(2) |'), row  # both seeds scored in the last 10% of 400 steps
    assert (root / 'table.csv').exists() and (root / 'table_aggregates.csv').exists()

    result = run_script('scripts/plot.py', f'--root={root}')
    assert result.returncode == 0, result.stderr
    assert (root / 'curves.png').read_bytes()[:4] == b'\x89PNG'
