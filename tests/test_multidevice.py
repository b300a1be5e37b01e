"""Data parallelism: 1, 2 and 8 devices, and 2 processes, train the same model.

Fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set per
subprocess since it must precede jax's start) run the real mesh code path.

Tolerance: on N devices the gradient is a sum of N partial sums, reduced in
another order than on one device, so results agree to float32 rounding, not
bitwise. After a few Adam steps that is ~1e-6 relative; we allow rtol 1e-4 /
atol 1e-6. One exception needs care: Adam's early updates are ~lr * sign(g),
and BatchNorm makes the kernels feeding it scale-invariant, so some of their
gradient components are pure rounding noise whose sign (and so a whole lr
step) can flip between device counts. And a deep BatchNorm net on random
pixels at batch 16 is chaotic: rounding grows to ~1e-3 in the loss within a
few steps. So the BatchNorm test compares one step (the loss and moving
statistics of the same initial parameters: per-device statistics would be
off by ~1e-1), with adam_epsilon=1 so Adam's update is ~lr * g, and params
within atol 1e-4 (BatchNorm's backward pass at 2 examples per device
amplifies rounding to ~1e-5), still 10x below one lr-sized update. Gradient
summation across devices over many steps is the dropout test's job.

The bugs these tests guard against are far larger than that: a gradient
averaged per device instead of over the global batch scales updates by N, BatchNorm
statistics taken per device shift activations by ~1e-1, and a dropout mask
repeated across devices changes the loss at ~1e-2.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import (ALL_CONFIGS, REPO_ROOT, final_state, load_config, make_idx_dataset,
                           read_jsonl, run_cnnjax)

RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('data')
  make_idx_dataset(str(directory), num_train=128, num_test=50)
  return str(directory)


def train_on(devices, name, workdir, data_dir, *extra):
  result = run_cnnjax([f'--config={REPO_ROOT}/configs/{name}.py',
                       f'--config.local_data_dir={data_dir}', '--config.batch_size=16',
                       '--config.eval_batch_size=16', '--config.num_train_steps=6',
                       f'--workdir={workdir}', *extra], cwd=os.path.dirname(workdir),
                      devices=devices)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def assert_close_runs(reference, other, config, atol=ATOL):
  rows_a, rows_b = read_jsonl(f'{reference}/metrics.jsonl'), read_jsonl(f'{other}/metrics.jsonl')
  for a, b in zip(rows_a, rows_b, strict=True):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=RTOL)
    assert a['train_accuracy'] == b['train_accuracy']
  state_a, state_b = (jax.device_get(final_state(config, w)) for w in (reference, other))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL, atol=atol),
               state_a.params, state_b.params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL, atol=atol),
               state_a.batch_stats, state_b.batch_stats)


@pytest.mark.parametrize('name,extra,atol', [
    # Dropout: masks must not repeat across devices. Adam's epsilon 1: with Keras' 1e-7, Adam
    # turns float rounding in near-zero gradients (summed per device, then across devices, in
    # another order than on one device) into ~1e-5 parameter differences.
    ('cnn_deep', ('--config.adam_epsilon=1.0',), ATOL),
    pytest.param('cifar_mobilenet_transfer',  # BatchNorm: statistics over the global batch.
                 ('--config.model_kwargs.image_size=32', '--config.trainable=.*',
                  '--config.pretrained=', '--config.fine_tune.num_epochs=0',
                  '--config.dataset=fashion_mnist', '--config.model_kwargs.input_adapter=repeat',
                  '--config.train_split=train', '--config.val_split=',
                  '--config.adam_epsilon=1.0', '--config.num_train_steps=1'),
                 1e-4, marks=pytest.mark.slow),
    pytest.param('cnn_simple',  # The recipes' ResNet-20: BatchNorm and residuals, one step.
                 ('--config.model=resnet', '--config.adam_epsilon=1.0',
                  '--config.num_train_steps=1'), 1e-4, marks=pytest.mark.slow),
])
def test_one_two_and_eight_devices_train_alike(name, extra, atol, tmp_path, data_dir,
                                                monkeypatch):
  if name == 'cifar_mobilenet_transfer':  # See cnnjax.compilation: XLA's defaults agree.
    monkeypatch.setenv('CNNJAX_XLA_DEFAULTS', '1')
  for devices in (1, 2, 8):
    result = train_on(devices, name, str(tmp_path / f'd{devices}'), data_dir, *extra)
    assert f'{devices}x cpu' in result.stdout  # The epoch line names the devices.
    results = json.loads((tmp_path / f'd{devices}' / 'results.json').read_text())
    assert results['num_devices'] == devices and results['device_kind'] == 'cpu'
  config = load_config(name)
  for key, value in (e.removeprefix('--config.').split('=', 1) for e in extra):
    if key.startswith('model_kwargs.'):
      config.model_kwargs[key.split('.', 1)[1]] = int(value) if value.isdigit() else value
    elif key == 'fine_tune.num_epochs':
      config.fine_tune.num_epochs = int(value)
    elif key not in ('adam_epsilon', 'num_train_steps'):
      config[key] = value
  for devices in (2, 8):
    assert_close_runs(str(tmp_path / 'd1'), str(tmp_path / f'd{devices}'), config, atol)


def test_calls_from_data_held_on_8_devices_train_like_one_device(tmp_path, data_dir):
  """Four steps per call, batches gathered on the devices from the split each holds, each
  device training on its rows: the one-device, one-step-per-call run."""
  adam = '--config.adam_epsilon=1.0'  # As in test_one_two_and_eight_devices_train_alike.
  train_on(1, 'cnn_deep', str(tmp_path / 'one'), data_dir, adam)
  result = train_on(8, 'cnn_deep', str(tmp_path / 'calls'), data_dir, adam,
                    '--config.steps_per_dispatch=4', '--config.data_on_device=true')
  assert 'training split held on the device' in result.stdout and '4 per call' in result.stdout
  assert_close_runs(str(tmp_path / 'one'), str(tmp_path / 'calls'), load_config('cnn_deep'))


EVALUATE_ON_8_DEVICES = '''
import jax, numpy as np
from configs import cnn_simple
from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.training import setup
assert jax.device_count() == 8
config = cnn_simple.get_config()
mesh = sharding.create_mesh()
experiment = setup.build(config, (28, 28, 1), 10)
model = experiment.model
state = jax.device_put(experiment.initial_state(), sharding.replicated(mesh))
rng = np.random.default_rng(0)
n = 263  # A prime number of examples.
split = datasets.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                       rng.integers(0, 10, n).astype(np.int32))
# The config's evaluation batch, 250, becomes 256 on 8 devices: a full batch, then 7 + padding.
trainer = experiment.trainer(0, mesh, config.eval_batch_size)
assert trainer.eval_batch_size == 256
metrics, predicted, labels = trainer.evaluate(state, split)
np.testing.assert_array_equal(labels, split.labels)
logits = model.apply(state.variables, split.images / np.float32(255.0))
assert predicted.shape == (n,)
np.testing.assert_array_equal(predicted, np.argmax(logits, -1))
assert round(metrics['accuracy'] * n) == np.sum(predicted == split.labels)
log_probs = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
expected_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), split.labels[:, None], 1))
np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
print('ok')
'''

EVERY_CONFIG = '''
import json, sys
import tensorflow_datasets as tfds
from tests.helpers import (ALL_CONFIGS, load_config, shared_weights_file, tiny_image_tree,
                           train_and_evaluate)
results = {}
with tfds.testing.mock_data(num_examples=EXAMPLES):
  for name in ALL_CONFIGS:
    config = load_config(name)  # Its own batch sizes: only the splits and images shrink.
    config.num_train_steps = 2
    if config.model in ('vgg16_classifier', 'mobilenet_v2_classifier'):
      config.model_kwargs.image_size = 32
    if config.pretrained:
      config.pretrained_path = shared_weights_file(
          'vgg16' if config.model == 'vgg16_classifier' else 'mobilenet_v2')
    if config.dataset == 'image_folder':
      config.local_data_dir = tiny_image_tree(TREE_PER_CLASS)
    results[name] = train_and_evaluate(config, f'{sys.argv[1]}/{name}')
print(json.dumps(results))
'''
MOCK_EXAMPLES = 170  # Per split: two steps at batch 64 from train[:80%]; 170 = 2 * 5 * 17.
TREE_PER_CLASS = 57  # image_folder: 3 classes, 171 examples per split.


# One device is test_train.py's test_config_trains_on_mock_tfds_and_writes_results (shrunken
# batches: one device splits any batch); here what splits over 8 devices is checked. A batch
# that splits over 8 splits over 2 and 4, and 170 examples (not a multiple of 8) make every
# evaluation pad its last batch; 2 devices are the multi-device tests' and the 2-process
# test's, so each config is not run a third time on them.
@pytest.mark.slow
@pytest.mark.parametrize('devices', [8])
def test_every_config_trains_and_evaluates_with_its_own_batch_sizes(devices, tmp_path):
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  result = subprocess.run(
      [sys.executable, '-c', EVERY_CONFIG.replace('EXAMPLES', str(MOCK_EXAMPLES)).replace(
          'TREE_PER_CLASS', str(TREE_PER_CLASS)), str(tmp_path)],
      env=env, capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout.splitlines()[-1])
  assert sorted(results) == sorted(ALL_CONFIGS)
  for name, run in results.items():
    assert run['steps'] == 2 and run['num_devices'] == devices, name
    examples = 3 * TREE_PER_CLASS if name == 'image_folder' else MOCK_EXAMPLES
    correct = run['test_accuracy'] * examples  # Every test example counted once.
    assert abs(correct - round(correct)) < 1e-3, (name, correct)


def test_evaluation_on_8_devices_counts_every_example_once():
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, '-c', EVALUATE_ON_8_DEVICES], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]


def test_batch_size_that_does_not_divide_fails_early(tmp_path, data_dir):
  result = run_cnnjax([f'--config={REPO_ROOT}/configs/cnn_simple.py',
                       f'--config.local_data_dir={data_dir}', '--config.batch_size=12',
                       f'--workdir={tmp_path}/run'], cwd=tmp_path, devices=8)
  assert result.returncode != 0
  assert 'config.batch_size=12 does not divide over the 8 devices' in result.stderr
  assert 'pass --config.batch_size=8 or --config.batch_size=16' in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, data_dir):
  """The two processes stream their rows of each batch (data_in_memory=false); one process
  holds the whole split in memory: the same run."""
  adam = '--config.adam_epsilon=1.0'  # As in test_one_two_and_eight_devices_train_alike.
  train_on(1, 'cnn_deep', str(tmp_path / 'single'), data_dir, adam)
  workdir = tmp_path / 'multi'
  port = free_port()
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  processes, logs = [], []
  for process_id in range(2):
    logs.append(open(tmp_path / f'process{process_id}.log', 'w'))
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/cnn_deep.py',
         f'--config.local_data_dir={data_dir}', '--config.batch_size=16',
         '--config.eval_batch_size=16', '--config.num_train_steps=6', f'--workdir={workdir}',
         adam, '--config.data_in_memory=false', '--multihost', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
         f'--process_id={process_id}'], cwd=tmp_path, env=env, stdout=logs[-1],
        stderr=subprocess.STDOUT))
  for process, log in zip(processes, logs):
    assert process.wait(timeout=600) == 0, open(log.name).read()[-3000:]
  consoles = [open(log.name).read() for log in logs]
  assert consoles[0].startswith('cnn_deep: model cnn_deep'), consoles[0][:300]
  assert not any('[Gloo]' in console for console in consoles), [c[:300] for c in consoles]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['num_devices'] == 2 and results['num_processes'] == 2
  assert len(read_jsonl(workdir / 'metrics.jsonl')) == 1  # Only process 0 wrote.
  assert_close_runs(str(tmp_path / 'single'), str(workdir), load_config('cnn_deep'))


def test_each_process_feeds_the_rows_of_its_own_devices(monkeypatch):
  """Rows come from the sharding's index map, even where a process's devices are not
  contiguous in the mesh (here: shards 2 and 0 of a global batch of 16 on 4 devices)."""
  from cnnjax import sharding

  class TwoOfFourDevices:
    def addressable_devices_indices_map(self, shape):
      assert shape == (16,)
      return {'device 5': (slice(8, 12),), 'device 1': (slice(0, 4),)}
  monkeypatch.setattr(sharding, 'batch_sharded', lambda mesh: TwoOfFourDevices())
  np.testing.assert_array_equal(sharding.host_local_rows(None, 16),
                                [0, 1, 2, 3, 8, 9, 10, 11])
  monkeypatch.undo()
  mesh = sharding.create_mesh()
  np.testing.assert_array_equal(sharding.host_local_rows(mesh, 8), np.arange(8))  # One host.
