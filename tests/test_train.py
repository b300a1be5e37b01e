"""Every study config trains end to end and writes the files a user reads."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax.errors import ConfigError
from cnnjax.training.steps import Metrics
from tests.helpers import (ALL_CONFIGS, REPO_ROOT, experiment, jitted_train_step, load_config,
                           read_jsonl, shrink, train_and_evaluate, validate)

EPOCH_FIELDS = {'epoch', 'step', 'train_loss', 'train_accuracy', 'epoch_seconds'}
RESULT_FIELDS = {'test_loss', 'test_accuracy', 'eval_seconds', 'train_seconds', 'params_total',
                 'params_trainable', 'num_devices', 'backend', 'pretrained'}


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_trains_on_mock_tfds_and_writes_results(name, tmp_path, mock_tfds):
  config = shrink(load_config(name))
  validate(config)
  results = train_and_evaluate(config, str(tmp_path))
  rows = read_jsonl(tmp_path / 'metrics.jsonl')
  assert len(rows) == 1 and rows[0]['step'] == 3
  expected = EPOCH_FIELDS | ({'val_loss', 'val_accuracy'} if config.val_split else set())
  if config.fine_tune.num_epochs:
    expected |= {'stage'}
    assert rows[0]['stage'] == 'transfer'
  assert set(rows[0]) == expected
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert RESULT_FIELDS <= set(on_disk) and on_disk == results
  assert 0.0 <= results['test_accuracy'] <= 1.0 and np.isfinite(results['test_loss'])
  assert results['pretrained'] is bool(config.pretrained)
  if config.pretrained:
    assert results['pretrained_file'].endswith('.h5') and len(results['pretrained_md5']) == 32
  assert json.loads((tmp_path / 'config.json').read_text())['name'] == name


def test_the_start_line_says_where_num_train_steps_cuts_the_run(tmp_path, mock_tfds, capsys):
  train_and_evaluate(shrink(load_config('mlp_128_64'), num_train_steps=2, num_epochs=5),
                     str(tmp_path / 'cut'))
  assert ('1 epoch(s) of 3 steps at batch 8, stopping at step 2 (config.num_train_steps); '
          in capsys.readouterr().out)
  train_and_evaluate(shrink(load_config('mlp_128_64'), num_train_steps=-1, num_epochs=2),
                     str(tmp_path / 'whole'))
  assert '2 epoch(s) of 3 steps at batch 8; ' in capsys.readouterr().out


def test_a_model_too_large_for_the_memory_is_refused_before_it_is_made(tmp_path, mock_tfds,
                                                                       monkeypatch):
  from cnnjax import sharding
  free = sharding.free_memory_bytes()
  assert free is not None and 0 < free <= os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  # cnn_simple: 50,186 parameters, 4 bytes each as weights, gradients and Adam's two moments.
  monkeypatch.setattr(sharding, 'free_memory_bytes', lambda: 4 * 4 * 50_186 - 1)
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(shrink(load_config('cnn_simple')), str(tmp_path / 'run'))
  assert str(error.value) == (
      "Model 'cnn_simple' on 28x28x1 images has 50,186 parameters: training needs at least 0.8 "
      "MiB (weights, gradients, optimizer state), and this machine's memory has 0.8 MiB free. "
      'Check config.image_size and config.model_kwargs, or choose a smaller model.')
  assert not os.path.exists(tmp_path / 'run')
  # And a few scalars (the step count, the learning rate).
  monkeypatch.setattr(sharding, 'free_memory_bytes', lambda: 4 * 4 * 50_186 + 1024)
  train_and_evaluate(shrink(load_config('cnn_simple')), str(tmp_path / 'run'))


def structured_batch(num_examples=64, seed=0):
  """Images whose class is visible (a bright row at 2 * label): learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)
  images = rng.integers(0, 60, (num_examples, 28, 28, 1)).astype(np.uint8)
  images[np.arange(num_examples), 2 * labels + 4, :, 0] = 255
  return images, labels


def test_cnn_simple_loss_goes_down():
  setup = experiment(load_config('cnn_simple'))
  state = setup.initial_state()
  step = jitted_train_step(setup)
  images, labels = structured_batch()
  losses = []
  for _ in range(30):
    state, metrics, _ = step(state, images, labels, Metrics.empty())
    losses.append(float(metrics.compute()['loss']))
  assert losses[0] > 2.0  # ~ln(10) at Keras' initialisation.
  assert losses[-1] < 0.5 * losses[0]


def test_frozen_params_stay_bitwise_unchanged(tmp_path, mock_tfds):
  setup = experiment(shrink(load_config('vgg_transfer')))
  state = setup.initial_state()
  frozen_before = jax.tree.map(np.asarray, state.frozen_params)
  head_before = np.asarray(state.params['head_logits']['kernel'])
  images, labels = structured_batch(8)
  state, _, _ = jitted_train_step(setup)(state, images, labels, Metrics.empty())
  jax.tree.map(np.testing.assert_array_equal, frozen_before,
               jax.tree.map(np.asarray, state.frozen_params))
  assert not np.array_equal(head_before, state.params['head_logits']['kernel'])


@pytest.mark.parametrize('overrides,message', [
    ({'model': 'resnet50'}, "Unknown model 'resnet50'"),
    ({'num_epochs': -1}, 'config.num_epochs must be a positive integer'),
    ({'local_data_dir': '/no/such/dir'}, 'config.local_data_dir'),
    ({'train_split': 'train[:80'}, 'config.train_split'),
    ({'data_in_memory': 'maybe'}, 'config.data_in_memory'),
    ({'channels': 4}, 'config.channels must be 1'),
    ({'trainable': '(['}, 'config.trainable'),
])
def test_bad_config_is_rejected_with_the_field_named(overrides, message):
  config = load_config('cnn_simple')
  config.update(overrides)
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('[', r'\[')):
    validate(config)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', True, 'config.batch_size must be a positive integer, got True.'),
    ('warmup_steps', -1, 'config.warmup_steps must be 0 (no warmup) or a positive integer, '
     'got -1.'),
    ('collapse_guard.every_steps', 0, 'config.collapse_guard.every_steps must be a positive '
     'integer, got 0.'),
    ('fine_tune.num_epochs', -2, 'config.fine_tune.num_epochs must be 0 (no fine-tuning) or a '
     'positive integer, got -2.'),
    ('augment.erasing_prob', 1.5, 'config.augment.erasing_prob must be in [0, 1], got 1.5.'),
    ('ema_decay', 1.0, 'config.ema_decay must be in [0, 1) (0 = off), got 1.0.'),
    ('momentum', -0.1, 'config.momentum must be in [0, 1), got -0.1.'),
    ('warmup_steps', 3_000_000_000, "config.warmup_steps=3000000000 is beyond 2**31 - 1, the "
     "largest count that JAX's 32-bit integers hold."),
])
def test_counts_and_fractions_out_of_range_are_named_with_what_is_allowed(field, value,
                                                                          message):
  config = load_config('cnn_simple')
  *parents, name = field.split('.')
  holder = config
  for parent in parents:
    holder = holder[parent]
  holder[name] = value
  with pytest.raises(ValueError) as error:
    validate(config)
  assert str(error.value) == message


def test_unknown_field_is_rejected():
  config = load_config('cnn_simple')
  config.lerning_rate = 0.1
  with pytest.raises(ValueError, match=r"Unknown config field\(s\) \['lerning_rate'\]"):
    validate(config)


def run_main(args, tmp_path, env_extra=None):
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT, **(env_extra or {})}
  return subprocess.run([sys.executable, '-m', 'cnnjax.main', *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line_rejects_unknown_field_before_compute(tmp_path):
  result = run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py', '--config.batchsize=3',
                     f'--workdir={tmp_path}/run'], tmp_path)
  assert result.returncode != 0
  assert 'batchsize' in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_command_line_reports_bad_input_in_one_line(tmp_path):
  result = run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py',
                     '--config.local_data_dir=/no/such/dir', f'--workdir={tmp_path}/run'], tmp_path)
  assert result.returncode == 2
  assert "cnnjax: error: config.local_data_dir='/no/such/dir' does not exist" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_half_precision_computes_in_bfloat16_and_keeps_float32_params():
  config = load_config('cnn_simple')
  config.half_precision = True
  setup = experiment(config)
  model, state = setup.model, setup.initial_state()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  images, labels = structured_batch()
  full = experiment(load_config('cnn_simple')).model
  half_logits = model.apply(state.variables, images / np.float32(255))
  assert half_logits.dtype == jax.numpy.bfloat16
  np.testing.assert_allclose(np.asarray(half_logits, np.float32),
                             full.apply(state.variables, images / np.float32(255)),
                             rtol=0.05, atol=0.05)
  step = jitted_train_step(setup)
  losses = []
  for _ in range(20):
    state, metrics, _ = step(state, images, labels, Metrics.empty())
    losses.append(float(metrics.compute()['loss']))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  assert losses[-1] < 0.5 * losses[0]
