"""Helpers the tests share: shrunken configs, tiny local datasets, weight files, run checks."""
import glob
import gzip
import hashlib
import importlib
import json
import os
import struct
import subprocess
import sys
import tempfile

import jax
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_CONFIGS = ('mlp_256_128', 'mlp_128_64', 'mlp_512_256_128', 'cnn_simple', 'cnn_deep',
                 'vgg_scratch', 'vgg_transfer', 'cifar_cnn', 'cifar_mobilenet_transfer')
ALL_CONFIGS = tuple(sorted(f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, 'configs'))
                           if f.endswith('.py') and f not in ('__init__.py', 'default.py')))
TIMING_FIELDS = ('epoch_seconds',)


def tiny_image_tree(per_class: int = 10) -> str:
  """A tree of 3 classes x `per_class` random 20x20 PNGs in train/ and test/ (made once per
  process) for configs that read image folders."""
  if per_class not in _TINY_TREES:
    from PIL import Image
    root = tempfile.mkdtemp(prefix='cnnjax-tree-')
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
      for name in ('ant', 'bee', 'wasp'):
        os.makedirs(os.path.join(root, split, name))
        for i in range(per_class):
          Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(
              os.path.join(root, split, name, f'{i}.png'))
    _TINY_TREES[per_class] = root
  return _TINY_TREES[per_class]


_TINY_TREES: dict[int, str] = {}


def load_config(name: str):
  return importlib.import_module(f'configs.{name}').get_config()


def defaults():
  """configs/default.py's config: what the entry points hand the library."""
  from configs import default
  return default.get_config()


def train_and_evaluate(config, workdir):
  """`cnnjax.train.train_and_evaluate` as `python -m cnnjax.main` calls it."""
  from cnnjax import train
  return train.train_and_evaluate(config, str(workdir), defaults())


def validate(config):
  from cnnjax import config_validation
  config_validation.validate_config(config, defaults())


def experiment(config):
  """The config's `training.setup.Experiment` on its dataset's image shape and classes."""
  from cnnjax.data import datasets
  from cnnjax.training import setup
  if config.dataset == 'image_folder' and not config.local_data_dir:
    config = shrink(config)  # Its classes come from a tree: the tiny one.
  spec = datasets.describe(datasets.DataOptions.from_config(config))
  return setup.build(config, spec.image_shape, len(spec.class_names))


def load_dataset(dataset, train_split='train', val_split='', test_split='test', **options):
  """`datasets.load_dataset` of the data these fields name (the other fields at defaults)."""
  from cnnjax.data import datasets
  return datasets.load_dataset(datasets.DataOptions(dataset, train_split, val_split, test_split,
                                                    **options))


def streamed_with_unreadable(held, unreadable, workers: int = 1):
  """`held` (an in-memory split) as a streamed one in which the examples at `unreadable`
  fail to decode, as images cut short after their header do."""
  from cnnjax.data import examples

  def read_example(i):
    if i in unreadable:
      raise examples.UnreadableExample(f'{i}.png is not an image')
    return held.images[i], held.labels[i]

  return examples.StreamedSplit(read_example, len(held), held.image_shape, 'streamed', workers)


def jitted_train_step(experiment_, stage: int = 0):
  """`steps.train_step` of a stage, jitted for one device: (state, images, labels, metrics)."""
  from cnnjax.training import steps
  model, tx = experiment_.models[stage], experiment_.optimizers[stage]
  return jax.jit(lambda s, x, y, m: steps.train_step(s, x, y, m, model=model, tx=tx))


def shrink(config, **overrides):
  """A config that runs in seconds on CPU: a few small batches, small images for VGG/MobileNet,
  and ImageNet weights from a Keras-format file written locally (no download)."""
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_train_steps = 3
  if config.model in ('vgg16_classifier', 'mobilenet_v2_classifier'):
    config.model_kwargs.image_size = 32
  if config.pretrained:
    backbone = 'vgg16' if config.model == 'vgg16_classifier' else 'mobilenet_v2'
    config.pretrained_path = shared_weights_file(backbone)
  if config.dataset == 'image_folder' and not config.local_data_dir:
    config.local_data_dir = tiny_image_tree()
  for key, value in overrides.items():
    config[key] = value
  return config


def backbone_variables(backbone: str, seed: int = 0):
  """A backbone's Flax variables with random weights and random BatchNorm statistics."""
  import jax.numpy as jnp
  from flax import traverse_util
  from cnnjax.models import transfer
  variables = transfer.make_backbone(backbone).init(jax.random.PRNGKey(seed),
                                                    jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)
  stats = traverse_util.flatten_dict(variables.get('batch_stats', {}))
  for path, value in stats.items():
    low, high = (-0.5, 0.5) if path[-1] == 'mean' else (0.5, 2.0)
    stats[path] = rng.uniform(low, high, value.shape).astype(np.float32)
  return {'params': jax.tree.map(np.asarray, variables['params']),
          'batch_stats': traverse_util.unflatten_dict(stats)}


def keras_weight_names(backbone: str, layer: str, targets) -> list[str]:
  """Weight names as the real files spell them: VGG16 notop's Keras-1 style
  (`block1_conv1_W_1:0`), MobileNetV2's `Conv1/kernel:0`."""
  if backbone == 'vgg16':
    return [f'{layer}_W_1:0', f'{layer}_b_1:0']
  if len(targets) == 4:
    suffixes = ['gamma', 'beta', 'moving_mean', 'moving_variance']
  elif targets[0].transform is not None:
    suffixes = ['depthwise_kernel']
  else:
    suffixes = ['kernel', 'bias'][:len(targets)]
  return [f'{layer}/{suffix}:0' for suffix in suffixes]


def write_keras_weights(path: str, backbone: str, variables) -> None:
  """Writes `variables` as a Keras application .h5 in the legacy layout, without Keras."""
  import h5py
  from cnnjax.pretrained import ports
  table = ports.PORT_TABLES[backbone]()
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [n.encode() for n in ['input_1', *table, 'last_pool']]
    for name in ('input_1', 'last_pool'):  # Layers without weights, as Keras lists them.
      f.create_group(name).attrs['weight_names'] = []
    for layer, targets in table.items():
      group = f.create_group(layer)
      names = keras_weight_names(backbone, layer, targets)
      for name, target in zip(names, targets):
        value = variables[target.collection]
        for key in target.path:
          value = value[key]
        value = np.asarray(value)
        # The only transform (depthwise HWC1 <-> HW1C) is its own inverse.
        group.create_dataset(name, data=target.transform(value) if target.transform else value)
      group.attrs['weight_names'] = [n.encode() for n in names]


_SHARED_WEIGHTS: dict[str, str] = {}


def shared_weights_file(backbone: str) -> str:
  """A Keras-format weights file for `backbone`, written once per test process."""
  if backbone not in _SHARED_WEIGHTS:
    path = os.path.join(tempfile.mkdtemp(prefix='cnnjax-weights-'), f'{backbone}.h5')
    write_keras_weights(path, backbone, backbone_variables(backbone))
    _SHARED_WEIGHTS[backbone] = path
  return _SHARED_WEIGHTS[backbone]


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


def tree_digest(directory):
  """{relative path: sha256} of every file under `directory`: what "nothing changed" means."""
  digest = {}
  for path in sorted(glob.glob(os.path.join(directory, '**', '*'), recursive=True)):
    if os.path.isfile(path):
      digest[os.path.relpath(path, directory)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return digest


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def restore_latest(config, workdir):
  """The latest checkpoint of `config`'s run in `workdir`, restored onto this process's devices."""
  from cnnjax.runs import saved
  return saved.restore_latest(experiment(config), str(workdir))


def final_state(config, workdir):
  """The latest checkpoint's TrainState."""
  return restore_latest(config, workdir).state


def assert_same_run(workdir_a, workdir_b, config):
  state_a, state_b = final_state(config, workdir_a), final_state(config, workdir_b)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a), jax.device_get(state_b))
  rows_a, rows_b = (read_jsonl(os.path.join(w, 'metrics.jsonl')) for w in (workdir_a, workdir_b))
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
  assert strip(rows_a) == strip(rows_b)
  results = [json.load(open(os.path.join(w, 'results.json'))) for w in (workdir_a, workdir_b)]
  assert results[0]['test_loss'] == results[1]['test_loss']
  assert results[0]['test_accuracy'] == results[1]['test_accuracy']


def run_tool(module, args, cwd, env_extra=None):
  """Runs `python -m MODULE ARGS` (a cnnjax command-line tool) in `cwd`; returns the result."""
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT, **(env_extra or {})}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def past_a_tools_handler(at_least):
  """A delay for `ctrl_c_after` (`at_least` seconds) that is past a tool's first statement
  (`exit_at_once.from_now`) however slow the machine is today: at least twice what a Python
  process takes here, now, to get that far. A Ctrl-C before it is Python's own
  KeyboardInterrupt, which no code of ours can shorten."""
  import time
  start = time.perf_counter()
  subprocess.run([sys.executable, '-c', 'import runpy, signal, sys; '
                  'from cnnjax.runs import exit_at_once'], cwd=REPO_ROOT, check=True)
  return max(at_least, 2 * (time.perf_counter() - start))


def ctrl_c_after(delay, argv):
  """Runs `argv` (a script path, or `-m MODULE`, and its arguments) from the repository root
  as a terminal runs it, where Ctrl-C raises KeyboardInterrupt whatever the test runner's own
  handling, in a session of its own; after `delay` seconds sends SIGINT to its whole process
  group, as Ctrl-C does. Returns the finished `subprocess.Popen` and its stdout and stderr."""
  import signal
  import time
  run = ('runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)'
         if argv[0] == '-m' else 'runpy.run_path(sys.argv[0], run_name="__main__")')
  as_a_terminal_runs_it = (
      'import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
      f'sys.argv = {list(argv[1:] if argv[0] == "-m" else argv)!r}; {run}')
  process = subprocess.Popen([sys.executable, '-c', as_a_terminal_runs_it], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
  time.sleep(delay)
  os.killpg(process.pid, signal.SIGINT)
  stdout, stderr = process.communicate(timeout=120)
  return process, stdout, stderr


def run_cnnjax(args, cwd, devices=1, timeout=600):
  """Runs `python -m cnnjax.main ARGS` with `devices` fake CPU devices; returns the result."""
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.run([sys.executable, '-m', 'cnnjax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


class AbandonedRead:
  """Collected, it raises what an orbax read abandoned by a failed restore raises as it ends
  (unraisable, as that one is): 'Event loop is closed'."""

  def __del__(self):
    raise RuntimeError('Event loop is closed')
