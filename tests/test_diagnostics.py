"""The collapse guard, the diagnostics report, and the configs that fix vgg_scratch."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cnnjax import diagnose
from cnnjax.training import diagnostics
from cnnjax.training import steps
from tests.helpers import (REPO_ROOT, experiment, load_config, restore_latest, shrink,
                           train_and_evaluate, validate, write_idx)

FIXES = {  # Config -> the one field it changes against vgg_scratch, and its value.
    'vgg_scratch_he': ('model_kwargs.kernel_init', 'he_normal'),
    'vgg_scratch_lr1e4': ('learning_rate', 1e-4),
    'vgg_scratch_bn': ('model_kwargs.batch_norm', True),
}


def write_structured_idx(directory, num_train=320, num_test=40, seed=0):
  """Fashion-MNIST-shaped IDX files whose class is visible (a bright row at 2 * label + 4)."""
  rng = np.random.default_rng(seed)
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    images[np.arange(n), 2 * labels.astype(int) + 4, :] = 255
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels)
  return str(directory)


@pytest.fixture
def structured_dir(tmp_path):
  directory = tmp_path / 'structured'
  directory.mkdir()
  return write_structured_idx(directory)


def guarded(config, data_dir, **overrides):
  config = shrink(config, local_data_dir=data_dir, num_train_steps=-1, num_epochs=4,
                  batch_size=32, **overrides)
  config.collapse_guard.every_steps = 10
  config.collapse_guard.patience_steps = 20
  config.collapse_guard.loss_band = 0.1
  return config


def collapsing_config(data_dir, **overrides):
  """A 1/16-wide VGG16 at learning rate 1e-2, too high for its depth: it never leaves ln(10)."""
  config = load_config('vgg_scratch')
  config.model_kwargs.width = 0.0625
  config.learning_rate = 1e-2
  return guarded(config, data_dir, **overrides)


def test_guard_warns_on_a_collapsing_net_and_not_on_cnn_simple(structured_dir, tmp_path, capsys):
  train_and_evaluate(guarded(load_config('cnn_simple'), structured_dir), str(tmp_path / 'a'))
  assert 'Training looks collapsed' not in capsys.readouterr().out
  train_and_evaluate(collapsing_config(structured_dir), str(tmp_path / 'b'))
  out = capsys.readouterr().out
  assert 'Training looks collapsed' in out
  assert 'configs/vgg_scratch_bn.py' in out and 'learning rate too high' in out


def test_stop_on_collapse_saves_and_stops(structured_dir, tmp_path):
  config = collapsing_config(structured_dir, stop_on_collapse=True)
  with pytest.raises(diagnostics.TrainingCollapsedError, match=r'Stopped at step (\d+)') as error:
    train_and_evaluate(config, str(tmp_path))
  step = int(error.value.args[0].split('Stopped at step ')[1].split()[0].rstrip(';'))
  assert step < 4 * 10  # Before the 40 steps of the run.
  assert str(step) in os.listdir(tmp_path / 'checkpoints')
  assert not os.path.exists(tmp_path / 'results.json')


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    structured_dir, tmp_path, monkeypatch):
  real_step = steps.train_step

  def poisoned_step(state, *args, **kwargs):
    """From the 6th step on, the parameters hold NaN: the loss of step 6 is NaN."""
    params = jax.tree.map(lambda p: jnp.where(state.step >= 5, jnp.nan, p), state.params)
    return real_step(state.replace(params=params), *args, **kwargs)
  monkeypatch.setattr(steps, 'train_step', poisoned_step)
  config = guarded(load_config('cnn_simple'), structured_dir, checkpoint_every_steps=2)
  with pytest.raises(diagnostics.NonFiniteLossError, match='became nan at step 6.*last good.*'
                     'and pass --config.resume=False, which moves this run aside'):
    train_and_evaluate(config, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()) == [2, 4]
  restored = restore_latest(config, tmp_path)
  assert restored.step == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.state.params)))


def negative_bias_variables(name='cnn_deep', bias=-100.0):
  config = load_config(name)
  model = experiment(config).model
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  flat = traverse_util.flatten_dict(variables['params'])
  flat = {k: jnp.full_like(v, bias) if k[-1] == 'bias' else v for k, v in flat.items()}
  return model, {'params': traverse_util.unflatten_dict(flat)}


def test_diagnostics_flag_dead_layers_when_biases_are_very_negative():
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
  model, dead = negative_bias_variables(bias=-100.0)
  stats = diagnostics.activation_statistics(model, dead, x)
  assert len(stats) == 6  # Five conv ReLUs and the hidden dense one.
  assert sorted(diagnostics.dead_layers(stats)) == sorted(stats)
  _, alive = negative_bias_variables(bias=0.0)
  assert diagnostics.dead_layers(diagnostics.activation_statistics(model, alive, x)) == []
  loss, norms = diagnostics.loss_and_gradient_norms(
      model, dead, x, jnp.arange(8) % 10, jax.random.PRNGKey(2))
  assert float(norms['block0_conv0/kernel']) == 0.0  # Dead ReLUs pass no gradient back.
  report = diagnose.format_report({
      'step': 0, 'loss': float(loss), 'chance_loss': np.log(10),
      'activations': {k: {s: float(v) for s, v in d.items()} for k, d in stats.items()},
      'gradient_norms': {k: float(v) for k, v in norms.items()},
      'dead_layers': diagnostics.dead_layers(stats)})
  assert report.count('<- DEAD') == 6 and 'Dead ReLU layers: block0_conv0_relu' in report


def test_diagnose_command_reports_layers(tmp_path, idx_dir):
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run(
      [sys.executable, '-m', 'cnnjax.diagnose', f'--config={REPO_ROOT}/configs/cnn_simple.py',
       f'--config.local_data_dir={idx_dir}', '--config.batch_size=8', '--steps=4', '--every=2'],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert [line.split(':')[0] for line in result.stdout.splitlines()
          if line.startswith('step')] == ['step 0', 'step 2', 'step 4']
  assert 'conv_1_relu' in result.stdout and 'conv_1/kernel' in result.stdout


def flat_config(config):
  return traverse_util.flatten_dict(json.loads(json.dumps(config.to_dict())), sep='.')


@pytest.mark.parametrize('name', sorted(FIXES))
def test_each_fix_changes_one_thing_against_vgg_scratch(name, tmp_path, mock_tfds):
  field, value = FIXES[name]
  fixed, faithful = flat_config(load_config(name)), flat_config(load_config('vgg_scratch'))
  changed = {k for k in set(fixed) | set(faithful) if fixed.get(k) != faithful.get(k)}
  assert changed == {'name', field} and fixed[field] == value
  config = shrink(load_config(name))
  validate(config)
  results = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results['test_loss']) and results['steps'] == 3


def test_vgg16_bn_adds_a_batchnorm_after_every_conv():
  from cnnjax.training import params as params_lib
  shapes = {}
  for name in ('vgg_scratch', 'vgg_scratch_bn'):
    config = load_config(name)
    model = experiment(config).model
    shapes[name] = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0),
                                                         jnp.zeros((1, 28, 28, 1))))
  assert (params_lib.count(shapes['vgg_scratch_bn']) - params_lib.count(shapes['vgg_scratch'])
          == 4 * (64 * 2 + 128 * 2 + 256 * 3 + 512 * 6))  # Scale, offset, mean, variance.
  assert len(shapes['vgg_scratch_bn']['batch_stats']['backbone']) == 13
