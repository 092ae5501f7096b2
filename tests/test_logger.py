import errno
import glob
import json
import os
import re
import struct

import numpy as np
import pytest

from dreamerjax.run import logger as logger_lib
from dreamerjax.run.logger import Logger, plot_curve, read_metrics


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _lines(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return f.read().splitlines()


def _read_tfrecords(path):
    """Yields the raw records of a TFRecord (event) file."""
    with open(path, 'rb') as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack('<Q', data[pos:pos + 8])
        pos += 12  # length + masked crc of length
        yield data[pos:pos + length]
        pos += length + 4  # data + masked crc of data


def test_write_jsonl_lines_and_types(tmp_path):
    wd = str(tmp_path / 'run')
    log = Logger(wd, total_steps=100, tensorboard=False)
    log.write(10, {'wm/loss': np.float32(0.5), 'ac/count': 3, 'x/arr': np.array([2.0])})
    log.write(20, {'wm/loss': 0.25})
    log.close()
    lines = _lines(wd)
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {'step': 10, 'wm/loss': 0.5, 'ac/count': 3.0, 'x/arr': 2.0}
    assert list(first)[0] == 'step'
    assert isinstance(first['ac/count'], float)
    assert json.loads(lines[1]) == {'step': 20, 'wm/loss': 0.25}


def test_jax_scalars(tmp_path):
    jnp = pytest.importorskip('jax.numpy')
    log = Logger(str(tmp_path), total_steps=10, tensorboard=False)
    log.write(1, {'a/b': jnp.asarray(1.5, jnp.bfloat16), 'a/c': jnp.float32(2.0)})
    log.close()
    assert read_metrics(str(tmp_path)) == [{'step': 1, 'a/b': 1.5, 'a/c': 2.0}]


def test_non_finite_stored_as_null(tmp_path):
    log = Logger(str(tmp_path), total_steps=10, tensorboard=False)
    log.write(1, {'a/nan': float('nan'), 'a/inf': np.inf, 'a/ninf': -np.inf, 'a/ok': 1.0})
    log.close()
    line = _lines(str(tmp_path))[0]
    assert 'NaN' not in line and 'Infinity' not in line
    assert json.loads(line) == {'step': 1, 'a/nan': None, 'a/inf': None, 'a/ninf': None,
                                'a/ok': 1.0}


def test_bad_metrics_raise(tmp_path):
    log = Logger(str(tmp_path), total_steps=10, tensorboard=False)
    with pytest.raises(TypeError, match='a/s'):
        log.write(1, {'a/s': 'text'})
    with pytest.raises(ValueError, match='step'):
        log.write(1, {'step': 3})
    log.close()


def test_append_on_resume_and_truncated_last_line(tmp_path):
    wd = str(tmp_path)
    log = Logger(wd, total_steps=10, tensorboard=False)
    log.write(1, {'a/x': 1.0})
    log.write(2, {'a/x': 2.0})
    log.close()
    # Simulate a crash in the middle of writing a line.
    with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
        f.write('{"step": 3, "a/x": 3.')
    assert read_metrics(wd) == [{'step': 1, 'a/x': 1.0}, {'step': 2, 'a/x': 2.0}]
    assert read_metrics(os.path.join(wd, 'metrics.jsonl')) == read_metrics(wd)
    # Resuming appends to the same file, after dropping the partial line.
    log = Logger(wd, total_steps=10, tensorboard=False)
    log.write(3, {'a/x': 30.0})
    log.close()
    assert [r['step'] for r in read_metrics(wd)] == [1, 2, 3]
    assert all(json.loads(line) for line in _lines(wd))


def test_read_metrics_partial_file_without_newline(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1}\n{"st')
    assert read_metrics(str(path)) == [{'step': 1}]
    path.write_text('{"step": 1')  # only a partial line
    assert read_metrics(str(path)) == []
    # A Logger on such a file drops the partial line before appending.
    log = Logger(str(tmp_path), total_steps=1, tensorboard=False)
    log.write(5, {})
    log.close()
    assert path.read_text() == '{"step": 5}\n'


def test_read_metrics_malformed_middle_line_warns(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
    with pytest.warns(UserWarning, match='malformed'):
        rows = read_metrics(str(path))
    assert rows == [{'step': 1}, {'step': 2}]


def test_progress_line_format_and_eta(tmp_path, capsys):
    clock = FakeClock()
    log = Logger(str(tmp_path), total_steps=50_000, tensorboard=False, console_every_s=10.0)
    log._clock = clock
    log._start_time = clock.t
    for i in range(12):
        log.write(100 * i, {'episode/return': float(i)})  # the last 10 are 2..11
    assert log.progress(0, 0) is None  # starts the clock
    clock.t += 5.0
    assert log.progress(4_000, 250) is None  # within console_every_s
    clock.t += 21.0  # 26 s since the first call
    line = log.progress(21_000, 1_326)
    assert line is not None
    out = capsys.readouterr().out
    assert out.strip() == line
    assert line == ('[ 42%] 21,000/50,000 env steps | 808 steps/s | 51.0 updates/s | '
                    'return 6.5 (10 ep) | 0:00:26 elapsed, ETA 0:00:35')
    # The next line measures the rate over the last interval only.
    clock.t += 10.0
    line = log.progress(31_000, 1_826)
    assert '1,000 steps/s' in line and '50.0 updates/s' in line
    assert line.startswith('[ 62%] 31,000/50,000')
    assert line.endswith('0:00:36 elapsed, ETA 0:00:19')
    # force prints even right away; no episodes -> placeholder.
    log2 = Logger(str(tmp_path / 'b'), total_steps=10, tensorboard=False)
    line = log2.progress(10, 0, force=True)
    assert re.match(r'^\[100%\] 10/10 env steps \| - steps/s \| - updates/s \| '
                    r'return - \(0 ep\) \| \d+:\d\d:\d\d elapsed, ETA 0:00:00$', line)
    # Offline runs count updates and average the evaluation returns.
    log3 = Logger(str(tmp_path / 'c'), total_steps=100, tensorboard=False, unit='updates',
                  return_key='eval/episode/return')
    log3.write(50, {'eval/episode/return': 300.0, 'episode/return': 1.0})
    line = log3.progress(50, 50, force=True)
    assert re.match(r'^\[ 50%\] 50/100 updates \| - updates/s \| return 300.0 \(1 ep\) \| ', line)
    log.close()
    log2.close()
    log3.close()


def test_disabled_is_noop(tmp_path, capsys):
    wd = str(tmp_path / 'run')
    log = Logger(wd, total_steps=10, enabled=False)
    log.write(1, {'a/b': 1.0})
    assert log.progress(1, 1, force=True) is None
    assert log.video(1, 'v', np.zeros((2, 4, 4, 3), np.uint8)) is None
    log.close()
    assert not os.path.exists(wd)
    assert capsys.readouterr().out == ''


def test_tensorboard_event_file(tmp_path):
    from tensorboardX.proto import event_pb2

    wd = str(tmp_path)
    log = Logger(wd, total_steps=10)
    log.write(7, {'wm/loss': 1.25, 'wm/bad': float('nan')})
    log.close()
    files = glob.glob(os.path.join(wd, 'tensorboard', 'events.out.tfevents.*'))
    assert len(files) == 1
    scalars = {}
    for record in _read_tfrecords(files[0]):
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
            scalars[v.tag] = (event.step, v.simple_value)
    assert scalars['wm/loss'] == (7, 1.25)
    assert np.isnan(scalars['wm/bad'][1])


def test_plot_curve_png(tmp_path):
    wd = str(tmp_path)
    log = Logger(wd, total_steps=1000, tensorboard=False)
    rng = np.random.default_rng(0)
    for i in range(50):
        log.write(20 * i, {'episode/return': float(i + rng.normal())})
        if i % 10 == 0:
            log.write(20 * i, {'eval/episode/return': float(i)})
    log.close()
    path = plot_curve(wd)
    assert path == os.path.join(wd, 'plots', 'episode_return.png')
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # Custom output path, and a key with no data still gives a PNG.
    out = plot_curve(wd, key='wm/missing', out=str(tmp_path / 'x' / 'm.png'))
    assert out == str(tmp_path / 'x' / 'm.png') and os.path.getsize(out) > 0


def test_moving_average():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(logger_lib._moving_average(y, 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(logger_lib._moving_average(y, 10), [1.0, 1.5, 2.0, 2.5])


def test_video_gif(tmp_path):
    log = Logger(str(tmp_path), total_steps=10, tensorboard=False)
    frames = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    path = log.video(3, 'openloop/pred', frames)
    assert path == os.path.join(str(tmp_path), 'videos', 'openloop_pred_3.gif')
    with open(path, 'rb') as f:
        assert f.read(6) in (b'GIF89a', b'GIF87a')
    gray = log.video(4, 'gray', np.zeros((3, 8, 8, 1), np.uint8))
    assert os.path.exists(gray)
    log.close()


def test_eval_metrics_leave_out_unfinished_episodes():
  row = logger_lib.eval_metrics([1.0, 3.0, float("nan")])
  assert row == {'eval/episode/return': 2.0, 'eval/episode/return_std': 1.0}


# Resume: the history only moves forward -------------------------------------------------------


def _tensorboard_steps(workdir):
    """(file, event step, kind) of every event, files in creation order."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')),
                       key=os.path.getmtime):
        for record in _read_tfrecords(path):
            event = event_pb2.Event.FromString(record)
            kind = 'start' if event.HasField('session_log') else 'scalar' if event.summary.value \
                else 'other'
            events.append((path, event.step, kind))
    return events


def test_resume_cuts_history_above_the_restored_step(tmp_path):
    wd = str(tmp_path)
    with Logger(wd, total_steps=100, resume_step=0) as log:
        for step in (10, 20, 30, 40):
            log.write(step, {'a/x': float(step)})
    with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
        f.write('{"step": 50, "a/x"')  # cut short by a crash
    with Logger(wd, total_steps=100, resume_step=20) as log:
        log.write(24, {'a/x': 24.0})
    assert [row['step'] for row in read_metrics(wd)] == [10, 20, 24]
    side, = glob.glob(os.path.join(wd, 'metrics.jsonl.cut-20-*'))
    assert open(side).read().splitlines() == [
        '{"step": 30, "a/x": 30.0}', '{"step": 40, "a/x": 40.0}', '{"step": 50, "a/x"']
    # TensorBoard: the second file starts by purging steps >= 21 of the first one.
    events = _tensorboard_steps(wd)
    second = [e for e in events if e[0] == events[-1][0]]
    assert ('start' in [kind for _, _, kind in second]
            and [step for _, step, kind in second if kind == 'start'] == [21])
    assert [step for _, step, kind in second if kind == 'scalar'] == [24]


@pytest.mark.reliability
def test_history_only_moves_forward_over_many_resumes(tmp_path, figure):
    figure('history moves forward over resumes', cases=20)
    rng = np.random.default_rng(0)
    wd, written, restored = str(tmp_path), [], 0
    for _ in range(20):  # each run writes some steps, then "crashes"; the next restores earlier
        with Logger(wd, total_steps=10**6, tensorboard=False, resume_step=restored) as log:
            step = restored
            for _ in range(int(rng.integers(1, 6))):
                step += int(rng.integers(1, 4))
                log.write(step, {'a/x': float(step)})
                written.append(step)
        restored = int(rng.integers(restored, step + 1))
    steps = [row['step'] for row in read_metrics(wd)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    cut = [json.loads(line)['step'] for path in glob.glob(os.path.join(wd, 'metrics.jsonl.cut-*'))
           for line in open(path)]
    assert sorted(steps + cut) == sorted(written)  # nothing lost


# Full or failing disks -------------------------------------------------------------------------


class FailingFile:
    """A file whose writes fail with `error_number` once `after` writes went through."""

    def __init__(self, file, after, error_number):
        self._file, self._left, self._errno = file, after, error_number

    def write(self, text):
        self._left -= 1
        if self._left < 0:
            raise OSError(self._errno, os.strerror(self._errno))
        return self._file.write(text)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.mark.reliability
@pytest.mark.parametrize('where,error_number', [
    ('metrics', errno.ENOSPC), ('metrics', errno.EIO), ('tensorboard', errno.ENOSPC),
    ('tensorboard', errno.EIO), ('video', errno.ENOSPC)])
def test_full_or_failing_disk_is_one_clear_error(tmp_path, monkeypatch, figure, where,
                                                 error_number):
    from dreamerjax.run import errors

    figure('I/O faults ending the run with one clear error')
    wd = str(tmp_path)
    real_open = open
    if where == 'metrics':
        monkeypatch.setattr(logger_lib, 'open', lambda *a, **k: FailingFile(
            real_open(*a, **k), 2, error_number), raising=False)
    if where == 'tensorboard':
        from tensorboardX import record_writer
        monkeypatch.setattr(record_writer, 'open_file', lambda path: FailingFile(
            real_open(path, 'wb'), 12, error_number))
    if where == 'video':
        from PIL import Image

        def full(*args, **kwargs):
            raise OSError(error_number, os.strerror(error_number))
        monkeypatch.setattr(Image.Image, 'save', full)
    log = Logger(wd, total_steps=10)
    with pytest.raises(errors.StorageError) as error:
        for step in range(10):
            log.write(step, {'a/x': 1.0, 'a/y': 2.0})
            log.video(step, 'v', np.zeros((2, 4, 4, 3), np.uint8))
    message = str(error.value)
    assert os.strerror(error_number).lower() in message and '\n' not in message
    assert 'resume' in message
    log.abandon()
