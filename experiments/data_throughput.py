"""Images/s of the input side: the streaming reader alone against the in-memory path.

    python experiments/data_throughput.py --local_data_dir=../shared/data/cifar10_jpg.tar.gz

Reads `--steps` training batches of `--config`'s dataset (CIFAR-10 JPEGs by
default) three ways, each `--repeats` times, and prints the median images/s:

- in memory: batches gathered from the decoded split (after a one-time decode,
  whose time is printed apart);
- streamed from the archive: compressed files held, decoded on the fly by
  1, 2, ... `--max_workers` threads;
- streamed from a directory: the archive unpacked to a temporary folder and
  every file read from disk and decoded when its batch is due.

It also times `--config`'s training step on this machine (images/s the model
consumes), and prints how many decoding threads keep up with it: the streamed
reader must deliver at least that many images/s, on top of the training's own
use of the cores. Both sides of each comparison are measured in the same run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = 'data_throughput.py'

from cnnjax.runs import exit_at_once  # pylint: disable=wrong-import-position  # Light.

if __name__ == '__main__':  # From the first moment: the imports take seconds.
  exit_at_once.from_now(exit_at_once.measuring_stopped(TOOL), fd=2)

import argparse  # pylint: disable=wrong-import-position
import dataclasses  # pylint: disable=wrong-import-position
import itertools  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
import tarfile  # pylint: disable=wrong-import-position
import tempfile  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

from cnnjax import cli  # pylint: disable=wrong-import-position


def training_batches(split, batch_size: int, first_epoch: int, mesh):
  """Training batches of epoch after epoch from `first_epoch`: as many as a measurement
  asks, however few one epoch of a small split holds."""
  from cnnjax.data import pipeline
  from cnnjax.errors import UserError
  if len(split) < batch_size:
    raise UserError(f'The split has {len(split)} examples, fewer than one batch of '
                    f"{batch_size} (the config's batch_size): measure a larger archive, or a "
                    'config with a smaller batch.')
  for epoch in itertools.count(first_epoch):
    yield from pipeline.train_batches(split, batch_size, seed=0, epoch=epoch, mesh=mesh)


def images_per_second(split, batch_size: int, steps: int, repeats: int) -> float:
  """Median images/s of reading `steps` batches in training order, `repeats` times."""
  from cnnjax import sharding
  mesh = sharding.create_mesh()
  rates = []
  for repeat in range(repeats):
    start = time.perf_counter()
    for _, _ in zip(range(steps), training_batches(split, batch_size, repeat, mesh)):
      pass
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def training_images_per_second(config, data, steps: int) -> float:
  """Images/s the jitted training step consumes, data already on the host (median of steps)."""
  from cnnjax import sharding
  from cnnjax.training import setup
  experiment = setup.build(config, data.image_shape, data.num_classes)
  mesh = sharding.create_mesh()
  trainer = experiment.trainer(0, mesh, config.eval_batch_size)
  state = jax.device_put(experiment.initial_state(), sharding.replicated(mesh))
  running = trainer.empty_metrics()
  batches = list(zip(range(steps + 3), training_batches(data.train, config.batch_size, 0, mesh)))
  times = []
  for i, batch in batches:
    start = time.perf_counter()
    state, running, loss = trainer.train_step(state, *sharding.put_global_batch(mesh, batch),
                                              running)
    jax.block_until_ready(loss)
    if i >= 3:  # The first steps compile.
      times.append(time.perf_counter() - start)
  return config.batch_size / statistics.median(times)


def main() -> None:
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', type=os.path.expanduser, default='configs/cifar_cnn.py')
  parser.add_argument('--local_data_dir', type=os.path.expanduser, required=True,
                      help='An image tree as .tar.gz (e.g. the CIFAR-10 JPEG archive).')
  parser.add_argument('--steps', type=int, default=100, help='Batches read per measurement.')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max_workers', type=int, default=os.cpu_count() or 1)
  args = parser.parse_args()
  if min(args.steps, args.repeats, args.max_workers) < 1:
    parser.error('--steps, --repeats and --max_workers must be 1 or more.')
  if not os.path.exists(args.local_data_dir):
    parser.error(f'--local_data_dir={args.local_data_dir} does not exist.')
  if not (os.path.isfile(args.local_data_dir) and tarfile.is_tarfile(args.local_data_dir)):
    parser.error(f'--local_data_dir={args.local_data_dir} is not a .tar.gz (or .tar) of an '
                 'image tree: this script compares reading the archive with reading it unpacked.')
  from experiments import benchmark
  try:
    benchmark.stoppable(lambda: measure(args), TOOL)  # Unwinds: the unpacked copy goes.
  except SystemExit as stop:
    if not (isinstance(stop.code, int) and stop.code > 128):
      raise
    # Stopped by a signal, maybe with a step of jax's in flight: tearing its runtime down
    # under that step can crash the interpreter (a segmentation fault, 2 stops in 8 here).
    # What needed cleaning is clean by now (the unwinding removed the unpacked copy).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(stop.code)


def measure(args) -> None:
  """Prints the table the module docstring describes."""
  from cnnjax import sharding
  from cnnjax.data import datasets
  from experiments.benchmark import load_config
  sharding.start_backend()
  config = load_config(args.config, [f'--config.local_data_dir={args.local_data_dir}'])
  options = dataclasses.replace(datasets.DataOptions.from_config(config), val_split='')
  batch = config.batch_size
  print(f'{args.config} on {args.local_data_dir}: batch {batch}, {args.steps} batches x '
        f'{args.repeats} repeats per row; {os.cpu_count()} CPU cores, {jax.devices()[0]}.')

  start = time.perf_counter()
  held = datasets.load_dataset(dataclasses.replace(options, data_in_memory='true'))
  decode_seconds = time.perf_counter() - start
  memory_rate = images_per_second(held.train, batch, args.steps, args.repeats)
  train_rate = training_images_per_second(config, held, min(args.steps, 50))
  print(f'one-time decode into memory: {decode_seconds:.1f} s for {len(held.train):,} train + '
        f'{len(held.test):,} test images')
  print(f'{"source":<34}{"workers":>8}{"images/s":>12}{"vs memory":>11}')
  print(f'{"in memory (gather)":<34}{"-":>8}{memory_rate:>12,.0f}{1.0:>11.3f}')
  print(f'{"training step consumes":<34}{"-":>8}{train_rate:>12,.0f}{train_rate / memory_rate:>11.3f}')

  with tempfile.TemporaryDirectory() as unpacked:
    with tarfile.open(args.local_data_dir) as tar:
      tar.extractall(unpacked, filter='data')
    needed = {}
    for label, root in (('streamed from the archive', args.local_data_dir),
                        ('streamed from a directory', unpacked)):
      for workers in sorted({1, 2, args.max_workers}):
        streamed = datasets.load_dataset(dataclasses.replace(
            options, local_data_dir=root, data_in_memory='false', data_workers=workers))
        rate = images_per_second(streamed.train, batch, args.steps, args.repeats)
        print(f'{label:<34}{workers:>8}{rate:>12,.0f}{rate / memory_rate:>11.3f}')
        if rate >= train_rate:
          needed.setdefault(label, workers)
    for label in ('streamed from the archive', 'streamed from a directory'):
      print(f'{label}: {needed.get(label, f"more than {args.max_workers}")} thread(s) keep up '
            f'with the training step ({train_rate:,.0f} images/s) on this machine')


if __name__ == '__main__':
  main()
