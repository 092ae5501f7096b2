"""Result tables and plots on synthetic run folders, and the bundled reference data."""

import csv
import json
import os
import pathlib

import numpy as np
import pytest

from dreamerjax.analysis import plots, published, tables
from tests.conftest import REPOSITORY_ROOT

SHARED_REFERENCE = REPOSITORY_ROOT.parent / 'shared' / 'reference'


def write_run(root, name, task, seed, steps, episodes, variant='dreamerv3', size='12m',
              from_pixels=False):
    """A run folder as the trainer leaves it: config.json and metrics.jsonl, where ``episodes``
    is a list of (step, return) and a loss row follows every episode row."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir, exist_ok=True)
    config = {'task': task, 'variant': variant, 'size': size, 'seed': seed,
              'run': {'steps': steps}, 'env': {'from_pixels': from_pixels}}
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config, f)
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        for step, value in episodes:
            f.write(json.dumps({'step': step, 'episode/return': value}) + '\n')
            f.write(json.dumps({'step': step, 'wm/loss': 1.0}) + '\n')
    return workdir


def constant_run(root, task, seed, score, steps=1000, finished=True):
    """Early episodes at -1000 (outside the last 10%) and episodes worth ``score`` after."""
    last = steps if finished else steps // 2
    episodes = [(100, -1000.0), (500, -1000.0)]
    if finished:
        episodes += [(950, score), (1000, score)]
    else:
        episodes += [(last, -1000.0)]
    return write_run(root, f'{task}__seed{seed}', task, seed, steps, episodes)


# Reference data -------------------------------------------------------------------------------


def test_reference_files_are_bundled_unchanged():
    bundled = pathlib.Path(published.__file__).parents[1] / 'reference'
    names = [published.ATARI_SCORES, published.DMC_SUMMARY, *published.CURVE_FILES.values()]
    for name in names:
        assert (bundled / name).is_file(), name
        if SHARED_REFERENCE.is_dir():
            assert (bundled / name).read_bytes() == (SHARED_REFERENCE / name).read_bytes()
    assert (bundled / 'README.md').is_file()


def test_reference_loading_and_task_names():
    scores = published.atari_scores()
    assert len(scores) == 26
    assert scores['Pong']['random'] == -20.7 and scores['Pong']['human'] == 14.6
    assert scores['Jamesbond']['dreamerv3_2024_computed'] == 540.0
    assert published.atari_tasks()[:2] == ['Alien-v5', 'Amidar-v5']
    summary = published.dmc_summary()
    assert len(summary) == 18
    assert summary['cartpole_balance'] == {10_000: 316, 20_000: 227, 50_000: 490, 100_000: 816,
                                           200_000: 967, 500_000: 991}
    assert 'BallInCupCatch-v1' in published.dmc_proprio_tasks()

    assert published.family('Pong-v5') == 'atari'
    assert published.family('Jamesbond-v5') == 'atari'
    assert published.family('CartpoleBalance-v1') == 'dmc'
    assert published.family('QuadrupedRun-v1') == 'dmc'  # only in the vision curves
    assert published.family('CartPole-v1') == 'other'
    assert published.reference_name('UpNDown-v5') == 'UpNDown'
    assert published.reference_name('BallInCupCatch-v1') == 'ball_in_cup_catch'
    assert published.envpool_id('atari_up_n_down') == 'UpNDown-v5'
    assert published.envpool_id('KungFuMaster') == 'KungFuMaster-v5'
    assert published.envpool_id('dmc_ball_in_cup_catch') == 'BallInCupCatch-v1'
    for kind in published.CURVE_FILES:
        for record in published.curves(kind):
            task = published.envpool_id(record['task'])
            assert published.family(task) in ('atari', 'dmc'), record['task']
            assert published.reference_curves(task, kind == 'dmc_vision'), task


def test_reference_curves_convert_atari_frames_to_agent_steps():
    pong = published.reference_curves('Pong-v5')
    assert sorted(seed for seed, _, _ in pong) == [0, 1, 2, 3, 4]
    assert all(95_000 < steps.max() <= 100_000 for _, steps, _ in pong)
    walker = published.reference_curves('WalkerWalk-v1')
    assert len(walker) == 5 and max(steps.max() for _, steps, _ in walker) > 400_000
    assert len(published.reference_curves('WalkerWalk-v1', from_pixels=True)) == 10
    assert published.reference_curves('CartPole-v1') == []


def test_human_normalized_and_baselines():
    assert published.human_normalized('Pong-v5', 14.6) == pytest.approx(1.0)
    assert published.human_normalized('Pong-v5', -20.7) == pytest.approx(0.0)
    assert published.human_normalized('Boxing-v5', 6.1) == pytest.approx(0.5)
    assert published.atari_baseline('Pong-v5', 'IRIS') == 14.6
    assert published.atari_baseline('Freeway-v5', 'STORM') == 0.0
    assert published.dmc_baseline('CartpoleBalance-v1', 100_000) == (816, 100_000)
    # 400k is nearer to 500k than to 200k on a log scale.
    assert published.dmc_baseline('CartpoleBalance-v1', 400_000) == (991, 500_000)
    assert published.dmc_baseline('CartpoleBalance-v1', 1_000) == (316, 10_000)


# Scores and aggregates ------------------------------------------------------------------------


def test_final_score_window():
    rows = [{'step': 100, 'episode/return': 5.0}, {'step': 900, 'episode/return': 7.0},
            {'step': 901, 'episode/return': 1.0}, {'step': 1000, 'episode/return': 3.0},
            {'step': 1000, 'wm/loss': 9.0}]
    assert tables.final_score(rows, 1000) == (2.0, 2)
    assert tables.final_score(rows, 1000, final_fraction=0.5) == (11.0 / 3, 3)
    assert tables.final_score(rows[:2], 1000) == (None, 0)
    with pytest.raises(ValueError):
        tables.final_score(rows, 1000, final_fraction=0.0)


def test_first_reach_step_and_seconds():
    rows = [{'step': 100, 'eval/episode/return': 50.0}, {'step': 200, 'run/seconds': 60.0},
            {'step': 300, 'eval/episode/return': 420.0}, {'step': 400, 'run/seconds': 150.0},
            {'step': 500, 'eval/episode/return': 500.0}, {'step': 600, 'run/seconds': 240.0}]
    key = 'eval/episode/return'
    assert tables.first_reach(rows, key, 400.0) == (300, 150.0)
    assert tables.first_reach(rows, key, 500.0) == (500, 240.0)
    assert tables.first_reach(rows, key, 501.0) == (None, None)
    assert tables.first_reach(rows[:3], key, 400.0) == (300, None)  # no log row after it


def test_runs_section_reports_the_threshold(tmp_path):
    write_run(str(tmp_path), 'CartPole-v1__seed0', 'CartPole-v1', 0, 1000,
              [(200, 100.0), (600, 450.0), (1000, 300.0)])
    text = tables.markdown(tables.build_table(str(tmp_path), threshold=400.0))
    assert '| best | first >= 400.0: step (minutes) |' in text
    assert '| 1,000 / 1,000 | 1 | 300.0 | 450.0 | 600 |' in text
    assert 'first >=' not in tables.markdown(tables.build_table(str(tmp_path)))


def test_drop_superseded_keeps_the_resumed_segment():
    rows = [{'step': 100, 'a': 1}, {'step': 200, 'a': 2}, {'step': 300, 'a': 3},
            {'step': 200, 'a': 20}, {'step': 300, 'a': 30}, {'wm/loss': 1}]
    assert [row['a'] for row in tables.drop_superseded(rows)] == [1, 20, 30]


# Table on synthetic run folders ---------------------------------------------------------------


@pytest.fixture
def atari_sweep(tmp_path):
    """Pong seeds at HNS 0.5 and 1.0, Boxing at 0.25 and 2.0, and an unfinished Boxing seed."""
    root = str(tmp_path / 'sweep')
    constant_run(root, 'Pong-v5', 0, -20.7 + 35.3 * 0.5)
    constant_run(root, 'Pong-v5', 1, 14.6)
    constant_run(root, 'Boxing-v5', 0, 0.1 + 12.0 * 0.25)
    constant_run(root, 'Boxing-v5', 1, 0.1 + 12.0 * 2.0)
    constant_run(root, 'Boxing-v5', 2, 50.0, finished=False)
    os.makedirs(os.path.join(root, 'not_a_run'))
    return root


def test_table_scores_and_normalization(atari_sweep):
    table = tables.build_table(atari_sweep, bootstrap_reps=500)
    assert len(table.runs) == 5
    rows = {row.task: row for row in table.rows}
    pong, boxing = rows['Pong-v5'], rows['Boxing-v5']
    assert pong.scores == pytest.approx((-3.05, 14.6))
    assert pong.normalized == pytest.approx((0.5, 1.0))
    assert pong.std == pytest.approx(np.std([-3.05, 14.6], ddof=1))
    assert (boxing.runs, boxing.finished, boxing.seeds) == (3, 2, (0, 1))
    assert boxing.normalized == pytest.approx((0.25, 2.0))

    ours = {item.statistic: item for item in table.aggregates if not item.published}
    assert ours['mean'].value == pytest.approx((0.75 + 1.125) / 2)
    assert ours['median'].value == pytest.approx((0.75 + 1.125) / 2)
    assert ours['IQM'].value == pytest.approx((0.5 + 1.0) / 2)
    for item in ours.values():
        assert (item.tasks, item.runs) == (2, 4)
        assert item.low <= item.value <= item.high
        assert 0.25 <= item.low and item.high <= 2.0
    iris = {item.statistic: item for item in table.aggregates if item.method == 'IRIS'}
    iris_pong = (14.6 + 20.7) / 35.3
    iris_boxing = (70.1 - 0.1) / 12.0
    assert iris['mean'].value == pytest.approx((iris_pong + iris_boxing) / 2)
    assert iris['IQM'].value is None


def test_table_include_partial(atari_sweep):
    table = tables.build_table(atari_sweep, bootstrap_reps=10, include_partial=True)
    boxing = next(row for row in table.rows if row.task == 'Boxing-v5')
    assert boxing.seeds == (0, 1)  # the unfinished run has no episode in the window
    table = tables.build_table(atari_sweep, final_fraction=0.6, bootstrap_reps=10,
                               include_partial=True)
    boxing = next(row for row in table.rows if row.task == 'Boxing-v5')
    assert boxing.seeds == (0, 1, 2) and boxing.scores[2] == -1000.0


def test_table_files(atari_sweep, tmp_path):
    table = tables.build_table(atari_sweep, bootstrap_reps=200)
    paths = tables.write_table(table, str(tmp_path / 'out' / 'table'))
    assert [os.path.basename(p) for p in paths] == ['table.md', 'table.csv',
                                                    'table_aggregates.csv']
    text = pathlib.Path(paths[0]).read_text()
    assert 'last 10% of its budget' in text and 'stratified bootstrap' in text
    assert '| Pong-v5 | 5.8 ± 12.5 (2) | 0.750 | 14.6 | 11.3 | 20.4 | -5.0 | -20.7 | 14.6 |' in text
    assert published.CAVEAT_STORM in text and published.CAVEAT_DREAMERV3_VERSION in text
    assert 'weipu-zhang/STORM `results/storm.json`' in text
    assert 'Boxing-v5__seed2 | Boxing-v5 | dreamerv3 (12m) | 2 | 500 / 1,000 (unfinished)' in text
    with open(paths[1]) as f:
        rows = {row['task']: row for row in csv.DictReader(f)}
    assert float(rows['Pong-v5']['hns_mean']) == pytest.approx(0.75)
    assert float(rows['Boxing-v5']['IRIS']) == 70.1 and rows['Boxing-v5']['seeds_scored'] == '2'
    with open(paths[2]) as f:
        aggregates = list(csv.DictReader(f))
    iqm = next(row for row in aggregates if row['published'] == 'False'
               and row['statistic'] == 'IQM')
    assert float(iqm['value']) == pytest.approx(0.75)


def test_dmc_table_uses_the_nearest_summary_column(tmp_path):
    root = str(tmp_path)
    for seed, score in enumerate([700.0, 900.0]):
        write_run(root, f'CartpoleBalance-v1__seed{seed}', 'CartpoleBalance-v1', seed, 400_000,
                  [(400_000, score)])
    table = tables.build_table(root, bootstrap_reps=100)
    text = tables.markdown(table)
    assert 'summary column at 500,000 steps' in text
    assert '| CartpoleBalance-v1 | 800.0 ± 141.4 (2) | 991.0 |' in text
    assert published.CAVEAT_DMC_X_AXIS in text
    mean = next(item for item in table.aggregates if item.statistic == 'mean'
                and not item.published)
    assert (mean.value, mean.low, mean.high) == pytest.approx((800.0, 700.0, 900.0))


def test_dmc_from_pixels_gets_no_proprio_baseline(tmp_path):
    write_run(str(tmp_path), 'WalkerWalk-v1__seed0', 'WalkerWalk-v1', 0, 1000, [(1000, 5.0)],
              from_pixels=True)
    table = tables.build_table(str(tmp_path), bootstrap_reps=10)
    assert table.rows[0].method == 'dreamerv3 (12m, pixels)'
    text = tables.markdown(table)
    assert 'no published summary for DMC from pixels' in text
    assert '| WalkerWalk-v1 | 5.0 (1) | - |' in text
    assert not [item for item in table.aggregates if item.published]


# Plots ----------------------------------------------------------------------------------------


def test_binned_means_and_band():
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    binned = plots.binned_means([0, 5, 10, 11, 30, 40], [1, 3, 5, 7, 9, 100], edges)
    np.testing.assert_allclose(binned, [3.0, 7.0, 9.0])  # (0,5,10) | 11 | 30; 40 is outside
    assert np.isnan(plots.binned_means([25], [1.0], edges)[:2]).all()
    curves = np.array([[1.0, np.nan, 3.0], [3.0, np.nan, np.nan]])
    mean, low, high = plots.seed_band(curves, 'minmax')
    np.testing.assert_allclose(mean, [2.0, np.nan, 3.0])
    np.testing.assert_allclose(low, [1.0, np.nan, 3.0])
    np.testing.assert_allclose(high, [3.0, np.nan, 3.0])
    mean, low, high = plots.seed_band(curves, 'std')
    np.testing.assert_allclose([low[0], high[0]], [1.0, 3.0])


def test_plot_learning_curves(tmp_path):
    root = str(tmp_path)
    for seed in range(2):
        write_run(root, f'Pong-v5__seed{seed}', 'Pong-v5', seed, 100_000,
                  [(step, -21.0 + step / 5000) for step in range(1000, 100_001, 1000)])
        write_run(root, f'CartPole-v1__seed{seed}', 'CartPole-v1', seed, 2000,
                  [(step, step / 10) for step in range(100, 2001, 100)], variant='dreamerv1')
    path = plots.plot_learning_curves(root, band='std', bins=20)
    assert path == os.path.join(root, 'curves.png')
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_a_run_of_several_seeds_scores_each_seed(tmp_path):
    # A run with num_seeds=2 (seeds 5 and 6 side by side) tags each seed's rows with its index;
    # the shared run/ rows carry no tag.
    workdir = tmp_path / 'CartPole-v1__seeds5-6'
    workdir.mkdir()
    config = {'task': 'CartPole-v1', 'variant': 'dreamerv3', 'size': 'tiny', 'seed': 5,
              'num_seeds': 2, 'run': {'steps': 1000}, 'env': {}}
    (workdir / 'config.json').write_text(json.dumps(config))
    rows = [{'step': 500, 'run/seconds': 3.0}]
    for step, first, second in ((500, 10.0, 20.0), (950, 100.0, 300.0), (1000, 200.0, 500.0)):
        rows += [{'step': step, 'seed': 0, 'episode/return': first},
                 {'step': step, 'seed': 1, 'episode/return': second}]
    (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
    histories = tables.seed_histories(str(workdir))
    assert [seed for seed, _ in histories] == [5, 6]
    assert all(rows[0] == {'step': 500, 'run/seconds': 3.0} for _, rows in histories)
    runs = tables.collect(str(tmp_path), threshold=250.0)
    assert [(run.name, run.seed, run.score, run.best) for run in runs] == [
        ('CartPole-v1__seeds5-6/seed5', 5, 150.0, 200.0),
        ('CartPole-v1__seeds5-6/seed6', 6, 400.0, 500.0)]
    assert (runs[0].reached_step, runs[1].reached_step) == (None, 950)
    assert plots._run_curves(str(tmp_path), 'episode/return')['CartPole-v1'][
        'dreamerv3 (tiny)'][1][1].tolist() == [20.0, 300.0, 500.0]
