"""Shared test helpers: shrunken configs, mock TFDS data, tiny local datasets."""
import gzip
import importlib
import json
import os
import struct
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_CONFIGS = ('mlp_256_128', 'mlp_128_64', 'mlp_512_256_128', 'cnn_simple', 'cnn_deep',
                 'vgg_scratch', 'vgg_transfer', 'cifar_cnn', 'cifar_mobilenet_transfer')


def load_config(name: str):
  return importlib.import_module(f'configs.{name}').get_config()


def shrink(config, **overrides):
  """A config that runs in seconds on CPU: a few small batches, small images for VGG/MobileNet."""
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_train_steps = 3
  if config.model in ('vgg16_classifier', 'mobilenet_v2_classifier'):
    config.model_kwargs.image_size = 32
  for key, value in overrides.items():
    config[key] = value
  return config


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes `array` (uint8) as a gzipped IDX file, the MNIST distribution format."""
  header = b'\0\0\x08' + bytes([array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(directory, num_train=40, num_test=20, seed=0):
  """Writes a tiny Fashion-MNIST-shaped IDX dataset; returns its arrays."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels)
    arrays[prefix] = (images, labels)
  return arrays


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def idx_dir(tmp_path):
  directory = tmp_path / 'fashion'
  directory.mkdir()
  make_idx_dataset(str(directory))
  return str(directory)


@pytest.fixture
def mock_tfds():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=24):
    yield


TIMING_FIELDS = ('epoch_seconds',)


def final_state(config, workdir):
  """The latest checkpoint's TrainState, restored onto this process's devices."""
  from cnnjax import checkpointing, datasets, sharding, train
  spec = datasets.DATASETS[config.dataset]
  model = train.create_model(config, len(spec.class_names))
  tx = train.create_optimizer(config)
  template = jax.device_put(train.create_train_state(config, model, spec.image_shape, tx),
                            sharding.replicated(sharding.create_mesh()))
  checkpointer = checkpointing.Checkpointer(workdir, 3)
  restored = checkpointer.restore_latest(template, train.Metrics.empty())
  checkpointer.close()
  return restored.state


def assert_same_run(workdir_a, workdir_b, config):
  state_a, state_b = final_state(config, workdir_a), final_state(config, workdir_b)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a), jax.device_get(state_b))
  rows_a, rows_b = (read_jsonl(os.path.join(w, 'metrics.jsonl')) for w in (workdir_a, workdir_b))
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
  assert strip(rows_a) == strip(rows_b)
  results = [json.load(open(os.path.join(w, 'results.json'))) for w in (workdir_a, workdir_b)]
  assert results[0]['test_loss'] == results[1]['test_loss']
  assert results[0]['test_accuracy'] == results[1]['test_accuracy']


def run_cnnjax(args, cwd, devices=1, timeout=600):
  """Runs `python -m cnnjax.main ARGS` with `devices` fake CPU devices; returns the result."""
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.run([sys.executable, '-m', 'cnnjax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)
