"""A stopped run continues as if it never stopped; failures never cost saved work."""
import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest

from cnnjax.runs import checkpoints
from cnnjax.runs import saved as saved_run
from tests.helpers import (REPO_ROOT, assert_same_run, defaults, experiment, load_config,
                           make_idx_dataset, read_jsonl, shrink, train_and_evaluate, tree_digest)


def resumable_config(name, steps, **overrides):
  # Mock data: 24 examples, batch 8 -> 3 steps per epoch.
  return shrink(load_config(name), num_train_steps=steps, num_epochs=100, **overrides)


def stopped_at_step_3(workdir):
  """`workdir` holding a `cnn_simple` run with its checkpoint at step 3 and no results, as
  if stopped there: the same command with more steps resumes it."""
  train_and_evaluate(resumable_config('cnn_simple', 3), workdir)
  os.remove(workdir / 'results.json')
  return workdir


@pytest.mark.parametrize('name,model_kwargs', [
    ('cnn_deep', {}),                                      # Dropout.
    pytest.param('cifar_mobilenet_transfer', {'image_size': 32},  # BatchNorm, training.
                 marks=pytest.mark.slow),
])
@pytest.mark.parametrize('stop_at', [4, 3])                # Mid-epoch, epoch boundary.
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(name, model_kwargs, stop_at, tmp_path,
                                                         mock_tfds):
  overrides = {'trainable': '.*'} if name.startswith('cifar_mobilenet') else {}
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train_and_evaluate(resumable_config(name, 7, **overrides), straight)
  train_and_evaluate(resumable_config(name, stop_at, **overrides), resumed)
  train_and_evaluate(resumable_config(name, 7, **overrides), resumed)
  assert [r['epoch'] for r in read_jsonl(os.path.join(resumed, 'metrics.jsonl'))] == [1, 2, 3]
  assert_same_run(straight, resumed, resumable_config(name, 7, **overrides))


def test_a_run_cut_short_where_a_periodic_checkpoint_falls_saves_once(tmp_path, mock_tfds):
  """num_train_steps=2 ends a 3-step epoch at a step that checkpoint_every_steps=2 has just
  saved: the epoch's end saves nothing more (orbax refused the second save of the step)."""
  results = train_and_evaluate(resumable_config('cnn_simple', 2, checkpoint_every_steps=2),
                               tmp_path)
  assert results['steps'] == 2
  assert sorted(s for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()) == ['2']


def test_mid_epoch_checkpoints_hold_the_running_metrics(tmp_path, mock_tfds):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  config = resumable_config('cnn_deep', 6, checkpoint_every_steps=2)
  train_and_evaluate(config, straight)
  train_and_evaluate(config, resumed)
  # Keep only the mid-epoch checkpoint at step 2, as if the run had died at step 3.
  for step in ('3', '6'):
    os.rename(os.path.join(resumed, 'checkpoints', step), os.path.join(tmp_path, step))
  os.remove(os.path.join(resumed, 'results.json'))
  train_and_evaluate(config, resumed)
  assert_same_run(straight, resumed, config)


def test_finished_run_is_not_retrained(tmp_path, mock_tfds, capsys):
  config = resumable_config('cnn_simple', 3)
  first = train_and_evaluate(config, str(tmp_path))
  stamp = os.path.getmtime(tmp_path / 'metrics.jsonl')
  assert train_and_evaluate(config, str(tmp_path)) == first
  assert f'{tmp_path} holds a finished run (3 steps); not retraining.' in capsys.readouterr().out
  assert os.path.getmtime(tmp_path / 'metrics.jsonl') == stamp
  # Asked for fewer steps than it trained: its results, said to be those of the longer run.
  assert train_and_evaluate(resumable_config('cnn_simple', 2), str(tmp_path)) == first
  assert ('holds a finished run (3 steps, more than the 2 this config asks for); not '
          'retraining.') in (out := capsys.readouterr().out)
  assert 'after those 3 steps; --config.resume=False trains 2 afresh' in out


def test_a_run_trained_on_keeps_the_shorter_runs_results_aside_and_never_reports_them(
    tmp_path, mock_tfds, capsys):
  """A finished run of 3 steps, trained on to 6 and killed between its last checkpoint and
  its results: the next run reported the 3-step results.json as the 6-step run's."""
  train_and_evaluate(resumable_config('cnn_simple', 3), tmp_path)
  shorter = (tmp_path / 'results.json').read_text()
  capsys.readouterr()
  longer = train_and_evaluate(resumable_config('cnn_simple', 6), tmp_path)
  (aside,) = [name for name in os.listdir(tmp_path) if name.startswith('results.json.previous-')]
  assert ('results.json held the results of the run at step 3; the run goes on from its '
          f'checkpoint at step 3, so they were moved to {aside}.') in capsys.readouterr().out
  assert (tmp_path / aside).read_text() == shorter and longer['steps'] == 6
  os.remove(tmp_path / aside)
  (tmp_path / 'results.json').write_text(shorter)  # As if killed before the 6-step results.
  again = train_and_evaluate(resumable_config('cnn_simple', 6), tmp_path)
  assert 'holds a finished run' not in capsys.readouterr().out
  untimed = lambda results: {k: v for k, v in results.items() if not k.endswith('_seconds')}
  assert untimed(again) == untimed(longer)  # Evaluated again: the 6-step run's own results.


@pytest.mark.parametrize('schedule', ['warmup_cosine', 'constant'])
def test_a_longer_resumed_run_warns_where_its_schedule_spans_the_run(schedule, tmp_path,
                                                                     mock_tfds, caplog):
  """2 epochs of 3 steps, then 3: a cosine that had reached 0 at step 6 would start again part
  way up. A constant rate is the same whatever the length; a shorter rerun trains nothing."""
  def epochs(n):
    return shrink(load_config('cnn_simple'), num_epochs=n, num_train_steps=-1,
                  schedule=schedule)
  train_and_evaluate(epochs(2), str(tmp_path))
  caplog.clear()
  train_and_evaluate(epochs(1), str(tmp_path))
  assert 'learning rate spans the run' not in caplog.text
  train_and_evaluate(epochs(3), str(tmp_path))
  assert ((f'Resuming with config.num_epochs 2 -> 3: the {schedule} learning rate spans the run'
           in caplog.text) == (schedule == 'warmup_cosine'))
  assert [r['epoch'] for r in read_jsonl(tmp_path / 'metrics.jsonl')] == [1, 2, 3]


def corrupt(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True):
    if os.path.isfile(path) and 'commit_success' not in path:
      with open(path, 'wb') as f:
        f.write(b'not a checkpoint')


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, mock_tfds, caplog):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train_and_evaluate(resumable_config('cnn_deep', 6), straight)
  train_and_evaluate(resumable_config('cnn_deep', 6), resumed)
  corrupt(os.path.join(resumed, 'checkpoints', '6'))
  os.remove(os.path.join(resumed, 'results.json'))
  before = tree_digest(resumed)
  # A reader (cnnjax.evaluate, cnnjax.predict) uses the checkpoint before and moves nothing.
  assert saved_run.restore_latest(experiment(resumable_config('cnn_deep', 6)), resumed).step == 3
  assert tree_digest(resumed) == before and 'using the previous checkpoint' in caplog.text
  train_and_evaluate(resumable_config('cnn_deep', 6), resumed)
  assert 'Checkpoint step 6' in caplog.text and 'unreadable' in caplog.text
  assert len(os.listdir(os.path.join(resumed, 'checkpoints_unreadable'))) == 1  # Kept, not deleted.
  assert_same_run(straight, resumed, resumable_config('cnn_deep', 6))


def test_a_checkpoints_broken_array_data_is_named_by_what_was_wrong(tmp_path, mock_tfds, caplog):
  """The arrays' bytes cut short (the metadata intact): orbax's error quotes tensorstore's
  whole spec; the warning gives the error under it, which names the array and the file."""
  config = resumable_config('cnn_deep', 6)
  train_and_evaluate(config, tmp_path)
  data = glob.glob(str(tmp_path / 'checkpoints' / '6' / 'state' / '**' / 'd' / '*'),
                   recursive=True)
  with open(max(data, key=os.path.getsize), 'r+b') as f:  # The arrays' chunks.
    f.truncate(8)
  assert saved_run.restore_latest(experiment(config), str(tmp_path)).step == 3
  warning = next(r.getMessage() for r in caplog.records if 'Checkpoint step 6' in r.getMessage())
  # Which array's read fails first varies (params.*, opt_state.*): they are read at once.
  assert re.search(r'OUT_OF_RANGE: Error reading "[\w.]+/', warning), warning
  assert 'TensorStore details' not in warning and len(warning) < 600


def test_a_reader_lists_again_the_steps_a_training_run_rotated_away(tmp_path, mock_tfds,
                                                                   monkeypatch, caplog):
  """cnnjax.evaluate or predict on a run still training: the steps it listed were all deleted
  (keep_checkpoints) while it read them. It lists them again, quietly, and reads the new one."""
  config = resumable_config('cnn_deep', 6)
  train_and_evaluate(config, tmp_path)
  before = tree_digest(tmp_path)
  listings = []
  all_steps = checkpoints.ocp.CheckpointManager.all_steps
  def listed(manager, *args):
    listings.append(1)
    return [7, 8] if len(listings) == 1 else all_steps(manager, *args)  # Gone: rotated away.
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'all_steps', listed)
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  assert saved_run.restore_latest(experiment(config), str(tmp_path)).step == 6
  assert len(listings) >= 2 and 'unreadable' not in caplog.text
  assert tree_digest(tmp_path) == before
  # The reads of a step deleted under them end after orbax closed their event loop: Python
  # had printed a traceback for each, after the tool's own lines. Other errors still show.
  abandoned, other = (types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(text),
                                            object=None)
                      for text in ('Event loop is closed', 'something else'))
  namespace = {}
  exec(compile('async def read(): pass', f'{os.sep}orbax{os.sep}serialization.py', 'exec'),
       namespace)
  unfinished = namespace['read']()  # One of orbax's reads, which failed with nobody awaiting.
  failed_read = types.SimpleNamespace(exc_type=Exception, exc_value=Exception('reading array'),
                                      object=unfinished)
  for unraisable in (abandoned, other, failed_read):
    sys.unraisablehook(unraisable)
  unfinished.close()
  assert reported == [other]


def test_a_reader_passes_quietly_over_a_step_deleted_while_it_was_read(tmp_path, mock_tfds,
                                                                        monkeypatch, caplog):
  """The run deletes its oldest step file by file: a read that failed partway found the step
  still there, called it unreadable, and (with keep_checkpoints=1) found no checkpoint at
  all. Orbax's own listing, which looks at each step it lists, failed on one deleted after
  the listing (FileNotFoundError, a traceback)."""
  import shutil
  import threading
  config = resumable_config('cnn_deep', 6, checkpoint_every_steps=3)
  train_and_evaluate(config, tmp_path)
  restore = checkpoints.ocp.CheckpointManager.restore
  def read_while_deleted(manager, step, *args, **kwargs):
    if step == 6:  # The run rotates it away as it is read: gone a moment after the failure.
      threading.Timer(0.2, shutil.rmtree, [tmp_path / 'checkpoints' / '6']).start()
      raise KeyError('Item "meta" was not found in the checkpoint.')
    return restore(manager, step, *args, **kwargs)
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'restore', read_while_deleted)
  managers = checkpoints.ocp.CheckpointManager.__init__
  listings = []
  def listing(manager, *args, **kwargs):
    listings.append(1)
    if len(listings) == 1:
      raise FileNotFoundError(2, 'No such file or directory', str(tmp_path / 'checkpoints' / '7'))
    managers(manager, *args, **kwargs)
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, '__init__', listing)
  with caplog.at_level(logging.WARNING):
    assert saved_run.restore_latest(experiment(config), str(tmp_path)).step == 3
  assert 'unreadable' not in caplog.text and len(listings) == 2


@pytest.mark.parametrize('overrides,message', [
    ({'model': 'cnn_deep'}, 'model'),
    ({'batch_size': 4}, 'batch_size'),
])
def test_incompatible_run_fails_and_changes_nothing(overrides, message, tmp_path, mock_tfds):
  train_and_evaluate(resumable_config('cnn_simple', 3), str(tmp_path))
  before = tree_digest(tmp_path)
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match=message):
    train_and_evaluate(resumable_config('cnn_simple', 6, **overrides), str(tmp_path))
  assert tree_digest(tmp_path) == before


@pytest.mark.parametrize('overrides', [{}, {'batch_size': 4}])
def test_checkpoints_without_their_config_file_are_not_resumed(overrides, tmp_path, mock_tfds):
  """Only the shapes could be checked, so another batch size resumed at a step of another
  epoch, and the metrics counted that epoch twice."""
  train_and_evaluate(resumable_config('cnn_simple', 3), str(tmp_path))
  os.remove(tmp_path / 'config.json')
  before = tree_digest(tmp_path)
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match='holds checkpoints but not the config.json of the run that made them'):
    train_and_evaluate(resumable_config('cnn_simple', 6, **overrides), str(tmp_path))
  assert tree_digest(tmp_path) == before


def test_checkpoints_of_another_model_are_caught_by_their_shapes(tmp_path, mock_tfds):
  """The last guard, where the config file agrees (edited by hand, or a model changed in code)."""
  train_and_evaluate(resumable_config('cnn_simple', 3), str(tmp_path))
  deep = resumable_config('cnn_deep', 6)
  (tmp_path / 'config.json').write_text(json.dumps(deep.to_dict()))
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match='does not fit this model'):
    train_and_evaluate(deep, str(tmp_path))


def test_resume_false_moves_the_old_run_aside(tmp_path, mock_tfds):
  workdir = tmp_path / 'run'
  train_and_evaluate(resumable_config('cnn_simple', 3), str(workdir))
  before = tree_digest(workdir)
  train_and_evaluate(resumable_config('cnn_simple', 2, resume=False), str(workdir))
  (moved,) = glob.glob(f'{workdir}.previous-*')
  assert tree_digest(moved) == before
  assert read_jsonl(workdir / 'metrics.jsonl')[-1]['step'] == 2


def test_runs_moved_aside_within_one_second_each_keep_a_folder_of_their_own(tmp_path, monkeypatch):
  """The second was moved into the first's folder (shutil.move into a folder that exists)."""
  from configs import default
  from cnnjax.runs import atomic
  from cnnjax.runs import workdir as workdir_lib
  monkeypatch.setattr(atomic.time, 'strftime', lambda *args: '20261204-142457')
  workdir = tmp_path / 'run'
  config = resumable_config('cnn_simple', 2, resume=False)
  for run in range(3):
    workdir.mkdir()
    (workdir / 'metrics.jsonl').write_text(f'{{"run": {run}}}\n')
    assert workdir_lib.prepare(config, str(workdir), default.get_config()) == {}
    assert not workdir.exists()
  aside = f'{workdir}.previous-20261204-142457'
  assert [read_jsonl(f'{folder}/metrics.jsonl') for folder in (aside, f'{aside}-2', f'{aside}-3')
          ] == [[{'run': 0}], [{'run': 1}], [{'run': 2}]]


def test_resume_false_moves_aside_only_a_folder_that_holds_the_run_alone(tmp_path, mock_tfds,
                                                                        monkeypatch):
  """`--workdir=.` with --config.resume=False ended in a traceback after shutil.move had
  copied the folder and emptied it; a project or home folder given as the workdir would be
  renamed with everything in it."""
  import errno
  from configs import default
  from cnnjax.runs import workdir as workdir_lib
  workdir = tmp_path / 'run'
  train_and_evaluate(resumable_config('cnn_simple', 2), str(workdir))
  for name in ('metrics.jsonl.previous-20261205-093049', 'results.json.tmp', '.DS_Store',
               '._config.json', 'Thumbs.db', '.nfs000000000001a2b300000004'):
    (workdir / name).write_text('{}\n')
  (workdir / '.ipynb_checkpoints').mkdir()  # Jupyter, once a file of the run was opened.
  assert workdir_lib._not_the_runs(str(workdir)) == []  # Every entry a run writes is known.
  (workdir / 'evaluations').mkdir()
  (workdir / 'notes.txt').write_text('mine')
  (workdir / 'photos').mkdir()
  config = resumable_config('cnn_simple', 2, resume=False)
  before = tree_digest(workdir)

  def refused(path, match):
    with pytest.raises(workdir_lib.WorkdirError, match=match):
      workdir_lib.prepare(config, path, default.get_config())
    assert tree_digest(workdir) == before and not glob.glob(f'{workdir}.previous-*')

  refused(str(workdir), r'--workdir=.*/run holds notes.txt, photos besides the run, and '
          r'--config.resume=False moves the whole folder aside\. Nothing was changed\.')
  os.remove(workdir / 'notes.txt')
  os.rmdir(workdir / 'photos')
  before = tree_digest(workdir)
  monkeypatch.chdir(workdir)
  refused('.', '--workdir=. is the current directory, which --config.resume=False cannot move '
          f'aside from under this process. Nothing was changed. Run the command from '
          f'{tmp_path} with --workdir=run')
  monkeypatch.chdir(workdir / 'checkpoints')
  refused('..', r'--workdir=\.\. is a folder above the current directory')
  monkeypatch.chdir(tmp_path)

  def busy(source, target):
    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), source)
  monkeypatch.setattr(os, 'rename', busy)  # A mount point, say.
  refused('run', r'could not move the previous run in run aside to .*run\.previous-\d{8}-\d{6} '
          r'\(Device or resource busy\)\. Nothing was changed')
  monkeypatch.undo()  # The working directory too.
  assert workdir_lib.prepare(config, str(workdir), default.get_config()) == {}
  (moved,) = glob.glob(f'{workdir}.previous-*')
  assert tree_digest(moved) == before


# --- Killed processes --------------------------------------------------------------------------

def main_command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/cnn_simple.py',
          f'--config.local_data_dir={data_dir}', '--config.batch_size=8', '--config.num_epochs=3',
          f'--workdir={workdir}', *extra]


def run_to_end(command):
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def start_and_signal(command, workdir, signum, log_path):
  """Starts a run and sends `signum` once it is past its first epoch."""
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  # Output goes to a file: an undrained pipe would fill up and block the run.
  with open(log_path, 'w') as log:
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
      assert process.poll() is None, open(log_path).read()[-3000:]
      time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signum)
    returncode = process.wait(timeout=300)
  return returncode, open(log_path).read()


@pytest.fixture
def bigger_idx_dir(tmp_path):
  directory = tmp_path / 'data'
  directory.mkdir()
  make_idx_dataset(str(directory), num_train=4000, num_test=50)  # 500 steps per epoch.
  return str(directory)


@pytest.mark.parametrize('signum', [signal.SIGTERM,
                                    pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_same_result(signum, tmp_path, bigger_idx_dir):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  # SIGKILL can only resume from a scheduled mid-epoch checkpoint. SIGTERM gets none, so that
  # its own save cannot coincide with one (the collapse guard's host syncs every 100 steps
  # make a signal likeliest to land on exactly those steps).
  extra = ('--config.checkpoint_every_steps=' + ('0' if signum == signal.SIGTERM else '50'),)
  run_to_end(main_command(bigger_idx_dir, straight, *extra))
  returncode, out = start_and_signal(main_command(bigger_idx_dir, killed, *extra), killed,
                                     signum, tmp_path / 'killed.log')
  assert not os.path.exists(os.path.join(killed, 'results.json')), 'finished before the signal'
  if signum == signal.SIGTERM:
    assert returncode == 128 + signal.SIGTERM
    assert 'a checkpoint was saved' in out
    latest = max(int(s) for s in os.listdir(os.path.join(killed, 'checkpoints')) if s.isdigit())
    assert latest % 500, 'SIGTERM should save at the step it arrived, not at an epoch end'
  else:
    assert returncode == -signal.SIGKILL
  resumed = run_to_end(main_command(bigger_idx_dir, killed, *extra))
  assert 'Resumed from the checkpoint at step' in resumed.stdout
  config = load_config('cnn_simple')
  assert_same_run(straight, killed, config)


def test_a_closed_terminal_saves_a_checkpoint_and_the_run_resumes(tmp_path, bigger_idx_dir):
  import select
  workdir = str(tmp_path / 'run')
  command = main_command(bigger_idx_dir, workdir, '--config.num_epochs=2')
  # The run in a session of its own whose controlling terminal is a new pseudo-terminal: its
  # stdout and stderr are that terminal, as in a shell.
  terminal, its_end = os.openpty()
  in_a_terminal = ('import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); '
                   'os.execv(sys.executable, sys.argv[1:])')
  process = subprocess.Popen([sys.executable, '-c', in_a_terminal, *command],
                             env={**os.environ, 'PYTHONPATH': REPO_ROOT}, stdin=its_end,
                             stdout=its_end, stderr=its_end, start_new_session=True)
  os.close(its_end)
  metrics, deadline, seen = os.path.join(workdir, 'metrics.jsonl'), time.time() + 300, b''
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
    if select.select([terminal], [], [], 0.05)[0]:  # Drained, or the run would block.
      seen += os.read(terminal, 1 << 16)
  time.sleep(0.3)
  os.close(terminal)  # The terminal closes: SIGHUP, then every write to it fails (EIO).
  assert process.wait(timeout=300) == 128 + signal.SIGHUP, seen[-2000:]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  saved = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert max(saved) % 500, 'the hangup should save at the step it arrived'
  resumed = run_to_end(command)
  assert f'Resumed from the checkpoint at step {max(saved)}' in resumed.stdout
  assert [row['epoch'] for row in read_jsonl(metrics)] == [1, 2]


def test_a_run_from_before_new_config_fields_resumes_and_evaluates(tmp_path, mock_tfds):
  """Fields added to configs/default.py after a run started take their defaults."""
  from cnnjax import evaluate
  workdir = tmp_path / 'old'
  train_and_evaluate(resumable_config('cnn_simple', 3), str(workdir))
  saved = json.loads((workdir / 'config.json').read_text())
  for field in ('warmup_steps', 'collapse_guard', 'stop_on_collapse'):  # "Older" cnnjax.
    del saved[field]
  (workdir / 'config.json').write_text(json.dumps(saved))
  assert saved_run.load_config(str(workdir), defaults()).collapse_guard.every_steps == 100
  os.remove(workdir / 'results.json')
  train_and_evaluate(resumable_config('cnn_simple', 6), str(workdir))  # Not refused.
  assert evaluate.evaluate(str(workdir), defaults())['step'] == 6


# --- Stops at an epoch's last step, restarts, two runs on one workdir ----------------------------

@pytest.mark.parametrize('stop_at', [3, 4])  # An epoch's last step (3 per epoch); mid-epoch.
def test_a_stop_at_any_step_resumes_with_every_epoch_row(stop_at, tmp_path, mock_tfds,
                                                         monkeypatch):
  from cnnjax.runs import hooks
  from cnnjax.runs import preemption
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  config = resumable_config('cnn_deep', 9)
  train_and_evaluate(config, straight)

  class SignalAt(hooks.Hook):  # SIGTERM noticed right after step `stop_at`.
    def __init__(self, signals):
      del signals

    def after_step(self, loop, images, loss):
      if loop.step == stop_at:
        loop.request_stop(preemption.StopRequested.at_step(15, loop.step))
  with monkeypatch.context() as patch:
    patch.setattr(hooks, 'SignalHook', SignalAt)
    with pytest.raises(preemption.StopRequested):
      train_and_evaluate(config, stopped)
  assert max(int(s) for s in os.listdir(os.path.join(stopped, 'checkpoints'))) == stop_at
  assert [r['step'] for r in read_jsonl(os.path.join(stopped, 'metrics.jsonl'))] == [3]
  train_and_evaluate(config, stopped)
  assert [r['epoch'] for r in read_jsonl(os.path.join(stopped, 'metrics.jsonl'))] == [1, 2, 3]
  assert_same_run(straight, stopped, config)


def signalled_first(function):
  """`function`, sending this process a SIGTERM before it runs: a signal at that moment."""
  def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return function(*args, **kwargs)
  return signalled


@pytest.mark.parametrize('num_steps', [3, 6])  # The last epoch's validation; the first's.
def test_a_signal_during_a_validation_stops_at_its_epochs_end(num_steps, tmp_path, mock_tfds,
                                                              monkeypatch):
  """The warning says the run saves and exits: it does, at the epoch's end, rather than
  after the next epoch's first step, or, after the last epoch, the test evaluation and the
  report. The same command then continues."""
  from cnnjax.runs import preemption
  from cnnjax.training import steps
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  config = resumable_config('cnn_simple', num_steps, val_split='test')
  train_and_evaluate(config, straight)
  evaluate, calls = steps.Trainer.evaluate, []

  def first_one_signalled(*args, **kwargs):  # A second signal would exit at once.
    if not calls:
      os.kill(os.getpid(), signal.SIGTERM)
    calls.append(1)
    return evaluate(*args, **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(steps.Trainer, 'evaluate', first_one_signalled)
    with pytest.raises(preemption.StopRequested, match='SIGTERM at step 3; a checkpoint was'):
      train_and_evaluate(config, stopped)
  assert not os.path.exists(os.path.join(stopped, 'results.json'))
  assert sorted(os.listdir(os.path.join(stopped, 'checkpoints'))) == ['3']
  train_and_evaluate(config, stopped)
  assert_same_run(straight, stopped, config)


def test_a_signal_before_training_stops_with_nothing_lost(tmp_path, mock_tfds, monkeypatch):
  from cnnjax.data import datasets
  from cnnjax.runs import preemption
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  config = resumable_config('cnn_deep', 4)
  train_and_evaluate(config, straight)
  with monkeypatch.context() as patch:  # While the data loads.
    patch.setattr(datasets, 'load_dataset', signalled_first(datasets.load_dataset))
    with pytest.raises(preemption.StopRequested, match='SIGTERM before training started'):
      train_and_evaluate(config, stopped)
  assert not os.path.exists(os.path.join(stopped, 'results.json'))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The guard is gone with the run.
  train_and_evaluate(config, stopped)
  assert_same_run(straight, stopped, config)


@pytest.mark.parametrize('delay', [0.3, 1.0])  # Importing absl and the config; importing jax.
def test_ctrl_c_in_the_first_second_is_one_line(delay, tmp_path):
  from tests.helpers import ctrl_c_after
  make_idx_dataset(str(tmp_path))
  workdir = tmp_path / 'run'
  process, stdout, stderr = ctrl_c_after(delay, [
      '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/cnn_simple.py',
      f'--config.local_data_dir={tmp_path}', f'--workdir={workdir}',
      '--config.batch_size=8'])  # A valid run: on a fast machine it reaches validation by 1 s.
  assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  last = stdout.strip().splitlines()[-1]
  if last == ('Stopped by SIGINT before training started: nothing new to save. Run the same '
              'command again to continue.'):  # A fast machine: the run's own guard had it.
    assert not checkpoints.has_checkpoints(str(workdir))
  else:
    assert last == ('Stopped by SIGINT before training started: nothing to save. Run the same '
                    'command again.')
    assert not workdir.exists()


def test_a_signal_during_the_test_evaluation_lets_it_finish(tmp_path, mock_tfds, monkeypatch,
                                                            caplog):
  from cnnjax.runs import selection
  straight, signalled = str(tmp_path / 'straight'), str(tmp_path / 'signalled')
  config = resumable_config('cnn_deep', 4)
  expected = train_and_evaluate(config, straight)
  with monkeypatch.context() as patch:
    patch.setattr(selection, 'evaluation_state', signalled_first(selection.evaluation_state))
    results = train_and_evaluate(config, signalled)
  assert 'Received SIGTERM: the training is saved; finishing the test evaluation' in caplog.text
  assert results['test_loss'] == expected['test_loss']
  assert os.path.exists(os.path.join(signalled, 'confusion_matrix.png'))
  assert_same_run(straight, signalled, config)


def test_a_signal_ignored_at_start_stays_ignored_and_guards_nest():
  from cnnjax.runs import preemption
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with preemption.guard_signals() as outer:
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      assert signal.getsignal(signal.SIGTERM) == outer._handle  # pylint: disable=protected-access
      with preemption.guard_signals() as inner:
        assert inner is outer
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGINT, previous)


def test_stop_on_collapse_at_an_epochs_end_saves_it_and_resumes(tmp_path, mock_tfds,
                                                                monkeypatch):
  from cnnjax.training import diagnostics
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  config = resumable_config('cnn_deep', 9)
  train_and_evaluate(config, straight)
  real_check = diagnostics.CollapseGuard.check_losses

  def collapsed_at_step_6(guard):
    steps = [step for step, _, _ in guard._pending]  # pylint: disable=protected-access
    symptom = real_check(guard)
    return 'a scripted collapse' if 6 in steps else symptom
  with monkeypatch.context() as patch:
    patch.setattr(diagnostics.CollapseGuard, 'check_losses', collapsed_at_step_6)
    with pytest.raises(diagnostics.TrainingCollapsedError, match='Stopped at step 6'):
      train_and_evaluate(resumable_config('cnn_deep', 9, stop_on_collapse=True), stopped)
  assert '6' in os.listdir(os.path.join(stopped, 'checkpoints'))
  assert [r['step'] for r in read_jsonl(os.path.join(stopped, 'metrics.jsonl'))] == [3, 6]
  train_and_evaluate(config, stopped)
  assert_same_run(straight, stopped, config)


def test_a_restart_from_scratch_moves_the_old_rows_aside_and_says_so(tmp_path, mock_tfds,
                                                                      capsys):
  """The earlier rows were dropped: the record of training that had taken place, lost."""
  config = resumable_config('cnn_simple', 6)
  train_and_evaluate(config, tmp_path / 'straight')
  workdir = tmp_path / 'run'
  train_and_evaluate(resumable_config('cnn_simple', 4), workdir)
  earlier = (workdir / 'metrics.jsonl').read_text()
  os.remove(workdir / 'results.json')  # As if stopped in epoch 2,
  os.rename(workdir / 'checkpoints', tmp_path / 'gone')  # then its checkpoints deleted.
  capsys.readouterr()
  train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  (aside,) = [name for name in os.listdir(workdir) if name.startswith('metrics.jsonl.previous-')]
  assert ('no readable checkpoint: training starts again from step 0, and the 2 epoch row(s) '
          f'of the earlier run were moved from metrics.jsonl to {aside}.') in out
  assert (workdir / aside).read_text() == earlier
  assert [r['epoch'] for r in read_jsonl(workdir / 'metrics.jsonl')] == [1, 2]
  assert_same_run(str(tmp_path / 'straight'), str(workdir), config)


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, bigger_idx_dir):
  workdir = tmp_path / 'run'
  command = main_command(bigger_idx_dir, workdir)
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  with open(tmp_path / 'first.log', 'w') as log:
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not os.path.exists(f'{workdir}.lock') and time.time() < deadline:
      assert first.poll() is None, open(tmp_path / 'first.log').read()[-3000:]
      time.sleep(0.05)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert 'is in use by another run (pid' in second.stderr and 'Traceback' not in second.stderr
    assert first.wait(timeout=600) == 0, open(tmp_path / 'first.log').read()[-3000:]
  assert read_jsonl(workdir / 'metrics.jsonl')[-1]['epoch'] == 3
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 1500
  assert not os.path.exists(f'{workdir}.lock')  # Released at the end.


def test_a_checkpoint_that_cannot_fit_is_refused_before_orbax_writes_it(tmp_path, mock_tfds,
                                                                         monkeypatch):
  import collections
  import shutil
  config = resumable_config('cnn_simple', 9)
  train_and_evaluate(config, tmp_path / 'uninterrupted')
  workdir = stopped_at_step_3(tmp_path / 'run')
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage(10**9, 10**9 - 4096, 4096))
  with pytest.raises(checkpoints.CheckpointWriteError,
                     match=r'checkpoint at step 6 .*needs up to 0\.\d\d MiB and the disk has '
                     r'0\.00 MiB free\. The checkpoints before it are kept'):
    train_and_evaluate(config, workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3']  # Nothing half-written.
  monkeypatch.undo()  # Space freed: the same command resumes, as if never stopped.
  train_and_evaluate(config, workdir)
  assert_same_run(str(tmp_path / 'uninterrupted'), str(workdir), config)


def test_every_process_refuses_a_save_that_one_process_cannot_fit(tmp_path, monkeypatch):
  """Each process checks its own disk; one refusing alone would leave the others waiting in
  orbax's save, so all refuse, naming the process that is short of space."""
  import numpy as np
  from cnnjax import sharding
  gathered = []

  def two_processes(free):  # This process's free bytes, then process 1's: 0.5 MiB.
    gathered.append(free)
    return [free, 0.5 * 2**20]
  monkeypatch.setattr(sharding, 'gathered_from_processes', two_processes)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=None)
  state = {'kernel': np.zeros((3, 2**18), np.float32)}  # 3 MiB.
  with pytest.raises(checkpoints.CheckpointWriteError,
                     match=r'checkpoint at step 7 .*needs up to 3\.00 MiB and the disk of '
                     r'process 1 has 0\.50 MiB free\. The checkpoints before it are kept'):
    checkpointer.save(7, state, {}, {})
  assert gathered[0] > 3 * 2**20  # This process's own disk had room: the refusal is process 1's.
  checkpointer.close()
  assert os.listdir(checkpointer.directory) == []  # Nothing was started.


def test_a_metrics_row_cut_off_mid_write_is_written_again(tmp_path, mock_tfds, caplog):
  from cnnjax.runs import writers
  config = resumable_config('cnn_simple', 6)
  train_and_evaluate(config, tmp_path / 'uninterrupted')
  workdir = stopped_at_step_3(tmp_path / 'run')
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 2, "step": 6, "train_lo')  # Killed mid-append: no newline.
  with caplog.at_level(logging.WARNING):
    assert [row['step'] for row in writers.read_metrics(str(workdir))] == [3]
    train_and_evaluate(config, workdir)  # Reads the file again: said once, not at each read.
  assert len([r for r in caplog.records if 'Left out the last line' in r.getMessage()]) == 1
  assert_same_run(str(tmp_path / 'uninterrupted'), str(workdir), config)
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  (workdir / 'metrics.jsonl').write_text('\n'.join(['{"epoch": 1, "ste', *lines]) + '\n')
  with pytest.raises(writers.MetricsFileError, match=r'Line 1 of .*metrics.jsonl is not an '
                     r"epoch's row .*delete that line"):
    writers.read_metrics(str(workdir))
  # Edited by hand: a loss in words had been plotted as a category.
  first = lines[0].replace('"train_loss": ', '"train_loss": "low", "x": ')
  (workdir / 'metrics.jsonl').write_text('\n'.join([first, *lines[1:]]) + '\n')
  with pytest.raises(writers.MetricsFileError, match=r"Line 1 of .*metrics.jsonl is not an "
                     r"epoch's row \(its 'train_loss' is 'low', not a number\)"):
    writers.read_metrics(str(workdir))


@pytest.mark.parametrize('steps, resumed_at, missing', [
    ([5, 10], 12, ''), ([5, 10, 12], 12, ''), (None, 10, '1, 2'), ([10], 10, '1'),
    ([5, 15], 17, '2'), ([], 3, ''), (list(range(5, 41, 5)), 40, ''),
    ([5], 40, '2, 3, 4, 5, 6 and 2 more')])
def test_epochs_trained_without_a_metrics_row_are_named(steps, resumed_at, missing, tmp_path,
                                                        caplog):
  """A metrics.jsonl deleted, or edited, while its checkpoints were kept: resumed without a
  word, the run's curves and record lacked those epochs."""
  from cnnjax.runs import writers
  if steps is not None:  # None: no file at all.
    (tmp_path / 'metrics.jsonl').write_text(
        ''.join(f'{{"epoch": {-(-s // 5)}, "step": {s}}}\n' for s in steps))
  log = writers.RunWriter(str(tmp_path), num_epochs=8, steps_per_epoch=5)
  with caplog.at_level(logging.WARNING):
    log.truncate_metrics(resumed_at, continues=True)
  said = [r.getMessage() for r in caplog.records if 'has no row for epoch' in r.getMessage()]
  assert said == ([f'{tmp_path}/metrics.jsonl has no row for epoch(s) {missing}, which the '
                   f'checkpoint at step {resumed_at} has trained (was the file edited, moved '
                   'or deleted?): its curves and record will lack them.'] if missing else [])
  assert os.path.exists(tmp_path / 'metrics.jsonl') == (steps is not None)


def test_a_metrics_row_the_disk_refuses_is_not_left_half_written(tmp_path, monkeypatch):
  import errno
  from cnnjax.runs import atomic
  path = str(tmp_path / 'metrics.jsonl')
  atomic.append_line(path, '{"step": 3}')
  real_write = os.write

  def half_then_full(fd, payload):
    real_write(fd, payload[:len(payload) // 2])
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'write', half_then_full)
  with pytest.raises(atomic.WriteRefusedError, match=r'Could not write .*metrics.jsonl \(No '
                     r'space left on device\)\. Free some space'):
    atomic.append_line(path, '{"step": 6}')
  assert open(path).read() == '{"step": 3}\n'
  with pytest.raises(atomic.WriteRefusedError, match='results.json'):
    with atomic.replaced_whole(str(tmp_path / 'results.json')) as f:
      f.write('{"test_loss": ')
      raise OSError(errno.ENOSPC, 'No space left on device')  # As the file's write would.
  assert os.listdir(tmp_path) == ['metrics.jsonl']  # No results.json, no .tmp left.


def test_reports_the_disk_refused_are_written_by_the_next_run(tmp_path, mock_tfds, monkeypatch):
  import errno
  from matplotlib.figure import Figure
  from cnnjax.runs import atomic
  config = resumable_config('cnn_simple', 3)
  workdir = tmp_path / 'run'

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(Figure, 'savefig', disk_full)
  with pytest.raises(atomic.WriteRefusedError, match='confusion_matrix.png'):
    train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir / 'results.json')  # Not marked finished: reports missing.
  monkeypatch.undo()
  results = train_and_evaluate(config, workdir)
  assert results['steps'] == 3 and [r['step'] for r in read_jsonl(workdir / 'metrics.jsonl')] == [3]
  for name in ('results.json', 'confusion_matrix.png', 'curves.png', 'classification_report.txt'):
    assert os.path.exists(workdir / name), name


def test_a_killed_runs_unfinished_saves_are_removed_by_the_next_run_only(tmp_path, mock_tfds,
                                                                        caplog):
  from cnnjax import evaluate
  workdir = stopped_at_step_3(tmp_path)
  # A kill during a save leaves orbax's temporary directory: one for step 6, which the resumed
  # run saves again, and one for step 5, which it never saves.
  unfinished = [workdir / 'checkpoints' / f'{step}.orbax-checkpoint-tmp' for step in (5, 6)]
  for path in unfinished:
    path.mkdir()
    (path / 'part').write_bytes(b'cut off')
  evaluate.evaluate(str(workdir), defaults())  # A reader: the files may be a live run's save.
  assert all((path / 'part').exists() for path in unfinished)
  train_and_evaluate(resumable_config('cnn_simple', 6), workdir)
  assert not any(path.exists() for path in unfinished)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']
  assert 'already exists' not in caplog.text  # Orbax's warning at the save of step 6.


def test_an_echo_of_a_refused_save_that_comes_before_the_refusal_is_dropped(monkeypatch):
  # Tensorstore's callbacks for writes in flight raise 'Event loop is closed' once orbax's
  # loop has ended on the refusal; on a loaded machine, before orbax logs the refusal.
  import errno
  import logging
  import types
  shown = []
  monkeypatch.setattr(sys, 'unraisablehook', shown.append)
  closed = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=ValueError('a bug of ours'))
  refusal = logging.LogRecord('absl', logging.ERROR, __file__, 1, 'Save Finalize failed', (),
                              (OSError, OSError(errno.EFBIG, 'File too large'), None))
  echoes = checkpoints._RefusedWriteEchoes()  # pylint: disable=protected-access
  sys.unraisablehook(closed)
  sys.unraisablehook(other)
  assert not echoes.filter(refusal)
  sys.unraisablehook(closed)
  echoes._show_held()  # pylint: disable=protected-access  # As at the process's end.
  assert shown == [other]
  # Without a refusal the same exception is no echo: it is shown, at the end.
  monkeypatch.setattr(sys, 'unraisablehook', shown.append)
  echoes = checkpoints._RefusedWriteEchoes()  # pylint: disable=protected-access
  sys.unraisablehook(closed)
  assert shown == [other]
  echoes._show_held()  # pylint: disable=protected-access
  assert shown == [other, closed]


def test_the_removal_of_unfinished_saves_ends_before_the_run_goes_on(tmp_path, monkeypatch):
  # Orbax removes them in a thread of its own; a run refused before its first save (a
  # finished run without checkpoints) exited while that thread worked, which then printed a
  # traceback at the interpreter's shutdown. A slow listing here stands for a loaded machine.
  import asyncio
  from orbax.checkpoint._src.path import temporary_paths
  listing = temporary_paths.all_temporary_paths

  async def slowly(*args, **kwargs):
    await asyncio.sleep(0.5)
    return await listing(*args, **kwargs)

  monkeypatch.setattr(temporary_paths, 'all_temporary_paths', slowly)
  unfinished = tmp_path / 'checkpoints' / '5.orbax-checkpoint-tmp'
  unfinished.mkdir(parents=True)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=None, owns_workdir=True)
  assert not unfinished.exists()
  checkpointer.close()


def test_a_lock_file_of_another_user_is_named_as_such(tmp_path, monkeypatch):
  """Another user's lock file, which this one may not open, was 'Could not write ... Free some
  space'. (Tests may run as root, whom no permission stops: the refusal is played.)"""
  import errno
  from cnnjax.runs import lock
  workdir = str(tmp_path / 'run')
  open(lock.lock_path(workdir), 'w').close()
  real_open = os.open
  def refusing(path, *args, **kwargs):
    if path == lock.lock_path(workdir):
      raise PermissionError(errno.EACCES, 'Permission denied', path)
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr(os, 'open', refusing)
  with pytest.raises(lock.WorkdirBusyError, match=(
      f'^{workdir} is locked by a file this user may not open, {workdir}.lock: another user\'s '
      'run may be using the workdir. Choose another --workdir, or, once no run of theirs is '
      'using it, ask them to remove the lock file.$')):
    lock.WorkdirLock(workdir).__enter__()


def test_the_lock_of_a_dead_run_does_not_block(tmp_path):
  from cnnjax.runs import lock
  workdir = str(tmp_path / 'run')
  script = (f'import os, sys; from cnnjax.runs import lock; l = lock.WorkdirLock({workdir!r}); '
            'l.__enter__(); os._exit(9)')  # Dies holding the lock, leaving its file.
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  assert subprocess.run([sys.executable, '-c', script], env=env).returncode == 9
  assert 'pid' in open(lock.lock_path(workdir)).read()
  with lock.WorkdirLock(workdir):
    with pytest.raises(lock.WorkdirBusyError, match='is in use by another run'):
      lock.WorkdirLock(workdir).__enter__()


def test_a_workdir_reached_through_a_link_takes_the_folders_own_lock(tmp_path):
  """A folder of runs linked under another name: each name had its own lock file, so two
  runs trained in one workdir, each deleting the other's checkpoints."""
  from cnnjax.runs import lock
  (tmp_path / 'big' / 'run').mkdir(parents=True)
  os.symlink(tmp_path / 'big', tmp_path / 'runs')
  with lock.WorkdirLock(str(tmp_path / 'big' / 'run')):
    for other_name in ('runs/run', 'runs/run/', 'runs/../runs/run'):
      with pytest.raises(lock.WorkdirBusyError, match='is in use by another run'):
        lock.WorkdirLock(str(tmp_path / other_name)).__enter__()
  assert lock.lock_path(str(tmp_path / 'runs' / 'run')) == str(tmp_path / 'big' / 'run.lock')


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
  """NFS without its lock daemon refuses every flock (ENOLCK): that stopped every run there in
  a traceback. Other errors of flock still end the run."""
  import errno
  from cnnjax.runs import lock
  workdir = str(tmp_path / 'run')

  def refused(error_number):
    def flock(fd, operation):
      raise OSError(error_number, os.strerror(error_number))
    return flock
  monkeypatch.setattr(lock.fcntl, 'flock', refused(errno.ENOLCK))
  with lock.WorkdirLock(workdir):
    assert not os.path.exists(lock.lock_path(workdir))
  assert 'cannot lock files (No locks available): the run goes on without the lock' in caplog.text
  monkeypatch.setattr(lock.fcntl, 'flock', refused(errno.EIO))
  with pytest.raises(OSError, match='Input/output error'):
    lock.WorkdirLock(workdir).__enter__()


@pytest.mark.parametrize('raised_as', ['OSError', 'tensorstore'])
def test_a_full_disk_during_a_save_is_one_clear_error(raised_as, tmp_path, mock_tfds,
                                                       monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  workdir = stopped_at_step_3(tmp_path / 'run')

  def disk_full(*args, **kwargs):
    if raised_as == 'tensorstore':  # What orbax's OCDBT writer raises, with no OSError.
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.conv_0.kernel/0" in OCDBT '
                       'database: Failed to write 999 bytes to file 12: No space left on '
                       "device [os_error_code='28']")
    raise RuntimeError('save failed') from OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  with pytest.raises(checkpoints.CheckpointWriteError, match='No space left on device.*kept'):
    train_and_evaluate(resumable_config('cnn_simple', 6), workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3']


def test_a_save_refused_in_orbaxs_threads_ends_in_one_line_and_costs_nothing(tmp_path, idx_dir):
  """A real refusal inside orbax's asynchronous writer (here `ulimit -f`, as a disk filling
  up during the save would be): orbax's threads, asyncio and tensorstore would each print
  their tracebacks of it; the user sees the one line. The next run, allowed, runs whole."""
  command = [sys.executable, '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/mlp_128_64.py',
             f'--config.local_data_dir={idx_dir}', '--config.batch_size=8',
             '--config.num_epochs=1', f'--workdir={tmp_path}/run']
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  # Files up to 256 KiB: the run's records fit, its checkpoint (1.3 MB of parameters) does not.
  small_files_only = ['bash', '-c', 'ulimit -f 256 && exec "$@"', 'bash']
  refused = subprocess.run(small_files_only + command, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300,
                           env={**env, 'JAX_ENABLE_COMPILATION_CACHE': 'false'})
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert refused.stderr.splitlines() == [
      f'cnnjax: error: Could not write a checkpoint in {tmp_path}/run/checkpoints (File too '
      'large). Raise the file-size limit (`ulimit -f unlimited`) or write to a file system that '
      'takes larger files, and run the same command to resume from the checkpoints before it, '
      'which are kept.']
  assert 'Traceback' not in refused.stdout
  allowed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert [row['step'] for row in read_jsonl(tmp_path / 'run' / 'metrics.jsonl')] == [5]
  assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['5']
