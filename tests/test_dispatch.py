"""Several steps per device call, fed from the host or from data held on the device.

A call of k steps is a loop on the device over the one-step function: it must train the
steps the one-step loop trains (same batches, dropout keys, metrics rows), resume bit for
bit from a checkpoint taken anywhere, and end where checkpoints and the collapse guard need
the state. The device feed gathers the batches the host feed reads: same numbers, bit for bit.
"""
import os

import jax
import numpy as np
import pytest

from cnnjax.errors import ConfigError
from cnnjax.training import diagnostics
from cnnjax.training import dispatch
from tests.helpers import (assert_same_run, final_state, load_config, read_jsonl, shrink,
                           train_and_evaluate)


def config_with(steps_per_dispatch, data_on_device='false', steps=7, **overrides):
  # Mock data: 24 examples, batch 8 -> 3 steps per epoch; cnn_deep has dropout.
  return shrink(load_config('cnn_deep'), num_train_steps=steps, num_epochs=100,
                steps_per_dispatch=steps_per_dispatch, data_on_device=data_on_device,
                **overrides)


def test_call_ends_at_the_first_multiple_of_any_period():
  assert dispatch.call_end(0, 10, [4]) == 4
  assert dispatch.call_end(5, 10, [4]) == 8           # Calls start at multiples of k.
  assert dispatch.call_end(8, 10, [4]) == 10          # The epoch (or the run) ends first.
  assert dispatch.call_end(8, 30, [4, 10, 0]) == 10   # A checkpoint's every_steps; 0 = none.
  assert dispatch.call_end(3, 30, [20, 100]) == 20


def test_auto_settings_keep_cpu_runs_one_step_per_call_on_host_data():
  from cnnjax.data.examples import Split
  split = Split(np.zeros((10, 4, 4, 1), np.uint8), np.zeros(10, np.int32))
  assert dispatch.steps_per_dispatch(0, 'cpu') == 1
  assert dispatch.steps_per_dispatch(0, 'gpu') == dispatch.ACCELERATOR_STEPS_PER_DISPATCH
  assert dispatch.steps_per_dispatch(5, 'cpu') == 5
  assert not dispatch.data_on_device('auto', split, 'cpu')
  assert dispatch.data_on_device('auto', split, 'gpu')
  assert dispatch.data_on_device('true', split, 'cpu')
  assert not dispatch.data_on_device('false', split, 'gpu')


def test_data_on_device_is_refused_for_a_streamed_split():
  from cnnjax.data.examples import StreamedSplit
  split = StreamedSplit(lambda i: (np.zeros((4, 4, 1), np.uint8), 0), 10, (4, 4, 1), 'x', 1)
  assert not dispatch.data_on_device('auto', split, 'gpu')
  with pytest.raises(ConfigError, match='data_on_device=true needs the training split in memory'):
    dispatch.data_on_device('true', split, 'gpu')


@pytest.mark.parametrize('fields,message', [
    ({'steps_per_dispatch': -1}, 'config.steps_per_dispatch must be'),
    ({'data_on_device': 'yes'}, 'config.data_on_device must be'),
    ({'data_on_device': 'True', 'data_in_memory': 'false'}, 'config.data_in_memory=false streams'),
])
def test_bad_dispatch_settings_are_named(fields, message):
  from tests.helpers import validate
  config = load_config('cnn_simple')
  for field, value in fields.items():
    config[field] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_a_call_reports_the_losses_of_its_steps_to_the_collapse_guard():
  guard = diagnostics.CollapseGuard(10, every_steps=100, patience_steps=2, loss_band=0.01)
  guard.record(4, jax.numpy.array([1.0, 2.0, 0.0, 0.0]), 2)   # Steps 3 and 4 of a call of 2.
  assert guard.check_losses() is None
  guard.record(6, jax.numpy.array([np.log(10), np.log(10), 1.0, 0.0]), 2)  # Steps 5 and 6.
  assert 'for 2 steps (up to step 6)' in guard.check_losses()
  guard.record(9, jax.numpy.array([1.0, np.nan, 1.0, 0.0]), 3)  # Steps 7..9.
  with pytest.raises(diagnostics.NonFiniteLossError, match='at step 8'):
    guard.check_losses()


def test_calls_of_several_steps_train_what_single_steps_train(tmp_path, mock_tfds):
  train_and_evaluate(config_with(1), tmp_path / 'one')
  train_and_evaluate(config_with(4), tmp_path / 'calls')
  rows = [read_jsonl(tmp_path / run / 'metrics.jsonl') for run in ('one', 'calls')]
  assert [r['step'] for r in rows[1]] == [3, 6, 7]  # The last row: the run's end.
  for a, b in zip(*rows, strict=True):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)
    assert a['train_accuracy'] == b['train_accuracy']
  states = [jax.device_get(final_state(config_with(1), tmp_path / run)) for run in ('one', 'calls')]
  assert int(states[1].step) == 7
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               states[0].params, states[1].params)


def test_device_held_data_trains_bitwise_as_host_fed_calls(tmp_path, mock_tfds, capsys):
  train_and_evaluate(config_with(4, 'false'), tmp_path / 'host')
  train_and_evaluate(config_with(4, 'true'), tmp_path / 'device')
  assert 'training split held on the device' in capsys.readouterr().out
  assert_same_run(tmp_path / 'host', tmp_path / 'device', config_with(4))


@pytest.mark.parametrize('data_on_device', ['false', 'true'])
@pytest.mark.parametrize('stop_at', [5, 3])  # Inside a call of 4 (4..8); an epoch's end.
def test_calls_resume_bitwise_from_a_stop_anywhere(stop_at, data_on_device, tmp_path,
                                                    mock_tfds):
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  train_and_evaluate(config_with(4, data_on_device, steps=10), straight)
  train_and_evaluate(config_with(4, data_on_device, steps=stop_at), resumed)
  assert max(int(s) for s in os.listdir(resumed / 'checkpoints')) == stop_at
  os.remove(resumed / 'results.json')
  train_and_evaluate(config_with(4, data_on_device, steps=10), resumed)
  assert [r['epoch'] for r in read_jsonl(resumed / 'metrics.jsonl')] == [1, 2, 3, 4]
  assert_same_run(straight, resumed, config_with(4, steps=10))


def test_a_run_resumes_with_another_number_of_steps_per_call(tmp_path, mock_tfds):
  """A GPU run resumed on a CPU (or the other way round) changes its calls, not its steps."""
  train_and_evaluate(config_with(1, steps=10), tmp_path / 'straight')
  train_and_evaluate(config_with(1, steps=5), tmp_path / 'moved')
  os.remove(tmp_path / 'moved' / 'results.json')
  train_and_evaluate(config_with(4, 'true', steps=10), tmp_path / 'moved')
  rows = [read_jsonl(tmp_path / run / 'metrics.jsonl') for run in ('straight', 'moved')]
  assert [r['step'] for r in rows[1]] == [3, 6, 9, 10]
  for a, b in zip(*rows, strict=True):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)


def test_calls_end_where_checkpoints_are_due(tmp_path, mock_tfds):
  from cnnjax.runs import hooks
  seen = []

  class Steps(hooks.Hook):
    def after_step(self, loop, images, loss):
      seen.append((loop.step, loop.call_steps, images.shape))
  original = hooks.SignalHook
  try:
    hooks.SignalHook = lambda signals: Steps()
    train_and_evaluate(config_with(4, 'true', steps=8, checkpoint_every_steps=5,
                                   keep_checkpoints=10, batch_size=4), tmp_path / 'run')
    # Epochs of 6 steps, calls of up to 4, a checkpoint every 5 steps.
    assert [(step, n) for step, n, _ in seen] == [(4, 4), (5, 1), (6, 1), (8, 2)]
    assert all(shape == (4, 28, 28, 1) for _, _, shape in seen)  # The last step's batch.
    assert sorted(int(s) for s in os.listdir(tmp_path / 'run' / 'checkpoints')) == [5, 6, 8]
    seen.clear()  # More steps per call than an epoch has: calls of an epoch.
    train_and_evaluate(config_with(1000, 'true', steps=8, batch_size=4), tmp_path / 'long')
    assert [(step, n) for step, n, _ in seen] == [(6, 6), (8, 2)]
  finally:
    hooks.SignalHook = original
