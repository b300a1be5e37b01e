"""Model selection: the best epoch's weights and early stopping, as Keras' EarlyStopping."""
import numpy as np
import pytest

from cnnjax.errors import ConfigError
from cnnjax.runs import hooks
from cnnjax.runs import selection
from tests.helpers import (defaults, load_config, read_jsonl, restore_latest, shrink,
                           train_and_evaluate, validate)

# A scripted validation curve, by epoch (1-based): improves up to epoch 4, then not by more
# than min_delta=0.01 (epoch 6 gains 0.005), so patience 2 stops at epoch 6.
CURVE = {1: 0.50, 2: 0.70, 3: 0.60, 4: 0.80, 5: 0.75, 6: 0.805, 7: 0.90, 8: 0.95}


def chooser(monitor='val_accuracy', mode='auto', min_delta=0.0, patience=0,
            restore_best=True, val_split='train[75%:]'):
  config = defaults()
  config.val_split = val_split
  config.selection.update(monitor=monitor, mode=mode, min_delta=min_delta, patience=patience,
                          restore_best=restore_best)
  return selection.Selection.from_config(config)


def rows(values, key='val_accuracy', steps_per_epoch=3):
  return [{'epoch': e, 'step': e * steps_per_epoch, key: v} for e, v in values.items()]


def test_early_stopping_stops_after_patience_epochs_without_improvement():
  progress = selection.replay(chooser(min_delta=0.01, patience=2), rows(CURVE))
  assert progress.best_epoch == 4 and progress.best_value == 0.80
  assert progress.stopped_epoch == 6 and progress.best_step == 12
  # With patience 3 epochs 7 and 8 are trained, and improve.
  assert selection.replay(chooser(min_delta=0.01, patience=3), rows(CURVE)).stopped_epoch is None
  assert selection.replay(chooser(min_delta=0.01, patience=3), rows(CURVE)).best_epoch == 8


def test_without_min_delta_any_gain_improves_and_losses_fall_in_auto_mode():
  assert selection.replay(chooser(patience=2), rows(CURVE)).best_epoch == 8
  losses = {1: 1.0, 2: 0.8, 3: 0.9, 4: 0.85, 5: 0.7}
  progress = selection.replay(chooser('val_loss', patience=2), rows(losses, 'val_loss'))
  assert (progress.best_epoch, progress.stopped_epoch) == (2, 4)
  maxed = selection.replay(chooser('val_loss', mode='max'), rows(losses, 'val_loss'))
  assert maxed.best_epoch == 1 and not maxed.stopped


def test_a_nan_never_improves():
  progress = selection.replay(chooser('val_loss', patience=1),
                              rows({1: 1.0, 2: float('nan')}, 'val_loss'))
  assert progress.best_epoch == 1 and progress.stopped_epoch == 2


@pytest.mark.parametrize('fields, message', [
    ({'monitor': 'val_acc'}, 'config.selection.monitor must be one of'),
    ({'monitor': 'val_accuracy', 'val_split': ''}, 'needs a validation split'),
    ({'monitor': 'train_loss', 'mode': 'up'}, 'config.selection.mode'),
    ({'monitor': 'train_loss', 'patience': -1}, 'config.selection.patience'),
    ({'patience': 3}, 'set config.selection.monitor'),
    ({'monitor': 'train_loss', 'min_delta': -0.1}, 'config.selection.min_delta'),
])
def test_bad_selection_fields_are_named(fields, message):
  config = shrink(load_config('cnn_simple'))
  config.val_split = fields.pop('val_split', 'train[75%:]')
  config.selection.update(fields)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def scripted(monkeypatch):
  """Replaces each epoch's val_accuracy with CURVE's (the row, and what selection reads)."""
  write_epoch = hooks.writers.RunWriter.write_epoch

  def write_scripted(self, row):
    write_epoch(self, dict(row, val_accuracy=CURVE[row['epoch']]))
    row['val_accuracy'] = CURVE[row['epoch']]
  monkeypatch.setattr(hooks.writers.RunWriter, 'write_epoch', write_scripted)


def selection_config(steps=-1, patience=2, epochs=8):
  config = shrink(load_config('cnn_simple'), num_train_steps=steps, num_epochs=epochs,
                  train_split='train[:75%]', val_split='train[75%:]', keep_checkpoints=20)
  config.selection.update(monitor='val_accuracy', min_delta=0.01, patience=patience)
  return config  # Mock data: 18 train examples, 3 steps per epoch.


def test_a_run_stops_early_and_reports_its_best_epochs_weights(tmp_path, mock_tfds, monkeypatch):
  from cnnjax import evaluate
  scripted(monkeypatch)
  config = selection_config()
  validate(config)
  results = train_and_evaluate(config, tmp_path / 'selected')
  assert [r['epoch'] for r in read_jsonl(tmp_path / 'selected' / 'metrics.jsonl')] == [
      1, 2, 3, 4, 5, 6]
  assert results['steps'] == 18 and results['selection']['best_epoch'] == 4
  assert results['selection']['stopped_early_at_epoch'] == 6
  assert 'best epoch by val_accuracy (epoch 4' in results['weights']
  # The reported test metrics are those of a run that ended at epoch 4 (training is
  # deterministic), not those of the last epoch's weights.
  epoch4 = selection_config(steps=12)
  epoch4.selection.update(monitor='', patience=0)
  at_epoch4 = train_and_evaluate(epoch4, tmp_path / 'epoch4')
  assert (results['test_loss'], results['test_accuracy']) == (
      at_epoch4['test_loss'], at_epoch4['test_accuracy'])
  assert restore_latest(config, tmp_path / 'selected').step == 18
  # cnnjax.evaluate reports the same weights, and says which.
  evaluation = evaluate.evaluate(str(tmp_path / 'selected'), defaults())
  assert evaluation['loss'] == pytest.approx(results['test_loss'], rel=1e-6)
  assert 'epoch 4' in evaluation['weights']
  # A second run of the same command finds the run finished: nothing trains again.
  assert train_and_evaluate(selection_config(), tmp_path / 'selected') == results
  assert len(read_jsonl(tmp_path / 'selected' / 'metrics.jsonl')) == 6


@pytest.mark.parametrize('first_steps', [10, 12])  # Mid-epoch 4; at the end of epoch 4.
def test_selection_survives_a_resume(first_steps, tmp_path, mock_tfds, monkeypatch):
  scripted(monkeypatch)
  straight = train_and_evaluate(selection_config(), tmp_path / 'straight')
  train_and_evaluate(selection_config(steps=first_steps), tmp_path / 'resumed')
  resumed = train_and_evaluate(selection_config(), tmp_path / 'resumed')
  timing = ('train_seconds', 'eval_seconds', 'epoch_seconds')
  strip = lambda r: {k: v for k, v in r.items() if k not in timing}
  assert strip(resumed) == strip(straight)
  assert ([strip(r) for r in read_jsonl(tmp_path / 'resumed' / 'metrics.jsonl')]
          == [strip(r) for r in read_jsonl(tmp_path / 'straight' / 'metrics.jsonl')])


def test_best_weights_saved_after_the_resumed_checkpoint_are_dropped(tmp_path):
  import jax.numpy as jnp
  from cnnjax.runs import checkpoints
  best = checkpoints.BestWeights(str(tmp_path))
  try:
    for step in (3, 9):
      best.save(step, {'params': {'w': jnp.full((2,), float(step))}}, {'epoch': step // 3})
    best.rewind(6)  # A resume from the checkpoint at step 6: epoch 3 will be trained again.
    assert best.manager.all_steps() == [3]
    restored = best.restore(3, {'params': {'w': jnp.zeros((2,))}})
    np.testing.assert_array_equal(restored['params']['w'], [3.0, 3.0])
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='missing'):
      best.restore(9, {'params': {'w': jnp.zeros((2,))}})
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='restore_best=False'):
      best.restore(3, {'params': {'w': jnp.zeros((3,))}})
  finally:
    best.close()


def test_best_weights_rotated_away_as_a_reader_reads_them_are_missing_not_broken(tmp_path):
  import shutil
  import jax.numpy as jnp
  from cnnjax.runs import checkpoints
  weights = {'params': {'w': jnp.ones((2,))}}
  writer = checkpoints.BestWeights(str(tmp_path), owns_workdir=True)
  writer.save(3, weights, {'epoch': 1})
  writer.close()
  reader = checkpoints.BestWeights(str(tmp_path))
  read = reader.manager.restore

  def rotated_while_read(step, args):
    shutil.rmtree(tmp_path / checkpoints.BEST_DIR / str(step))  # The run deletes the step.
    return read(step, args=args)
  reader.manager.restore = rotated_while_read
  try:
    with pytest.raises(checkpoints.BestWeightsMissingError, match=r'\(step 3\) left .* read'):
      reader.restore(3, weights)
  finally:
    reader.close()


def test_best_weights_reads_that_end_before_the_failure_is_reported_print_nothing(
    tmp_path, monkeypatch, capfd):
  """As for converted weights (test_pretrained.py): a read abandoned by the failed restore
  that ends before `BestWeights.restore` reached its `except` printed a traceback."""
  import sys
  import jax.numpy as jnp
  from cnnjax.runs import checkpoints
  weights = {'params': {'w': jnp.ones((2,))}}
  writer = checkpoints.BestWeights(str(tmp_path), owns_workdir=True)
  writer.save(3, weights, {'epoch': 1})
  writer.close()
  from tests.helpers import AbandonedRead
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)  # As a fresh process.

  def restore_whose_reads_end_as_it_fails(step, args):
    AbandonedRead()  # Collected at once: its error is unraisable.
    raise ValueError('OUT_OF_RANGE: Error reading "params.w/0"')
  reader = checkpoints.BestWeights(str(tmp_path))
  reader.manager.restore = restore_whose_reads_end_as_it_fails
  try:
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match='OUT_OF_RANGE'):
      reader.restore(3, weights)
  finally:
    reader.close()
  assert capfd.readouterr().err == ''


def test_a_reader_reads_a_newer_checkpoint_where_its_best_weights_were_rotated_away(
    tmp_path, mock_tfds, monkeypatch):
  """A tool reading a run still training: between its read of the latest checkpoint and of
  that checkpoint's best weights, the run saved two newer bests and deleted those."""
  import shutil
  from cnnjax.runs import checkpoints, saved
  from tests.helpers import experiment
  scripted(monkeypatch)  # Best epochs 1, 2, 4, 7 and 8; the newest two are kept.
  config = selection_config(patience=0)
  run, seen = tmp_path / 'run', tmp_path / 'seen'
  train_and_evaluate(selection_config(steps=12, patience=0), run)
  shutil.copytree(run, seen)  # The run as the reader found it: step 12, best epoch 4.
  train_and_evaluate(config, run)
  best = checkpoints.BestWeights(str(run))
  assert best.manager.all_steps() == [21, 24]
  best.close()
  read, stale = [], [str(seen)]

  def restore_latest(experiment_, workdir):  # The first read finds the run as `seen` holds it.
    read.append(workdir)
    return real_restore_latest(experiment_, stale.pop() if stale else workdir)
  real_restore_latest = saved.restore_latest
  monkeypatch.setattr(saved, 'restore_latest', restore_latest)
  reported = saved.evaluation_state(experiment(config), str(run), config)
  assert len(read) == 2 and reported.step == 24 and '(epoch 8' in reported.weights
  # With no newer checkpoint, the missing weights are an error naming what a reader can do.
  read.clear()
  shutil.rmtree(run / checkpoints.BEST_DIR)
  with pytest.raises(checkpoints.BestWeightsMissingError,
                     match=r'Copy best_weights/ back .* or pass --weights=last'):
    saved.evaluation_state(experiment(config), str(run), config)
  assert len(read) == 1
  last = saved.evaluation_state(experiment(config), str(run), config, weights='last')
  assert (last.step, last.weights) == (24, 'step 24')


def test_evaluate_takes_the_latest_checkpoints_weights_when_asked(
    tmp_path, mock_tfds, monkeypatch):
  from cnnjax import evaluate
  scripted(monkeypatch)
  config = selection_config()  # Stops at epoch 6; its best epoch is 4.
  train_and_evaluate(config, tmp_path / 'run')
  best = evaluate.evaluate(str(tmp_path / 'run'), defaults())
  last = evaluate.evaluate(str(tmp_path / 'run'), defaults(), weights='last')
  at_epoch6 = selection_config(steps=18)
  at_epoch6.selection.update(monitor='', patience=0)
  straight = train_and_evaluate(at_epoch6, tmp_path / 'epoch6')
  assert '(epoch 4' in best['weights'] and last['weights'] == 'step 18'
  assert last['loss'] == pytest.approx(straight['test_loss'], rel=1e-6)
  assert best['loss'] != last['loss']
