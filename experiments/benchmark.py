"""cnnjax against the studies' Keras models: same data, batch, machine, measured alternately.

    python experiments/benchmark.py --config=configs/cnn_simple.py \
        --local_data_dir=../shared/data/fashion_mnist [--epochs=3] [--json]
    python experiments/benchmark.py --ops      # The op rewrites against the ops they replace.
    python experiments/benchmark.py --config=configs/vgg_transfer.py \
        --vs=configs/vgg_transfer_fast.py [--config.field=value ...]
        # Two cnnjax configs run end to end (python -m cnnjax.main), same overrides.

Each side runs in its own worker process (so TensorFlow's idle threads cannot
steal cores from XLA, nor the other way round); the parent asks them for one
training epoch at a time, alternating, then for test evaluations. Reported:
compile time (first steps, separately), median per-step time (Keras: between
`fit`'s batch callbacks; cnnjax: 100 steps timed one by one after each epoch),
median epoch time (cnnjax: its training loop, which does not wait for each
step), median evaluation time of the test split and images per second, and
the ratio cnnjax / Keras of each. Keras is optional (`pip install keras`);
without it only cnnjax is measured. Machines are noisy: read medians.

What the user gave is checked before any worker starts (flags, config files and
fields, a Keras model for the config); what fails in a worker (the data, say)
comes back to the parent. Either ends in one line, exit status 2, as with
`python -m cnnjax.main`; a worker that dies or fails otherwise stops the
benchmark with its traceback, never a hang. SIGINT or SIGTERM stops it with
one line, exit status 128 + the signal (there is nothing to save).
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_WINDOW = 100  # cnnjax steps timed one by one (synced) after each measured epoch.
TOOL = 'benchmark.py'
sys.path.insert(0, REPO_ROOT)

from cnnjax.runs import exit_at_once  # pylint: disable=wrong-import-position  # Light.

# From the first moment (the imports take seconds) until the workers start, a stop has
# nothing to stop: it ends the process at once.
if __name__ == '__main__':
  exit_at_once.from_now(exit_at_once.measuring_stopped(TOOL), fd=2)

import argparse  # pylint: disable=wrong-import-position
import dataclasses  # pylint: disable=wrong-import-position
import gc  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import multiprocessing  # pylint: disable=wrong-import-position
from multiprocessing import resource_tracker  # pylint: disable=wrong-import-position
import signal  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position
import traceback  # pylint: disable=wrong-import-position
from typing import Any, Callable, Sequence  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

from cnnjax import cli  # pylint: disable=wrong-import-position
from cnnjax.errors import ConfigError, UserError  # pylint: disable=wrong-import-position
from cnnjax.runs import preemption  # pylint: disable=wrong-import-position
from cnnjax.training.loop import Hook  # pylint: disable=wrong-import-position

_stopped_by: int | None = None  # The signal that stopped the benchmark, if one did.


class WorkerUserError(UserError):
  """A worker found something wrong with what the user gave (the data, typically)."""


def load_config(path: str, overrides: Sequence[str] = ()):
  """The config file with `--config.field=value` overrides, parsed as cnnjax.main does; a
  `ConfigError` says what is wrong with either, in one line."""
  from absl import flags
  from ml_collections import config_flags
  path = os.path.expanduser(path)
  argv = [sys.argv[0], f'--config={path}', *overrides]
  flag_values = flags.FlagValues()
  # config_flags reads the overrides from sys.argv, from the definition on.
  saved, sys.argv = sys.argv, argv
  try:
    holder = config_flags.DEFINE_config_file('config', path, flag_values=flag_values)
    flag_values(argv)
    config = holder.value
    config.to_dict()  # ml_collections loads the file only when the config is first used.
  except Exception as error:  # pylint: disable=broad-except  # Config files run user code.
    from configs import default
    raise ConfigError(cli.flag_error_message(error, default.get_config())) from error
  finally:
    sys.argv = saved
  swallowed = cli.flag_given_a_flag(flag_values)
  if swallowed:
    raise ConfigError(swallowed)
  cli.expand_home_in_paths(config)
  return config


def check_config(path: str, overrides: list[str], keras: bool):
  """The config, its fields checked as `cnnjax.main` checks them and, for a Keras side, its
  model one `keras_reference` has."""
  from cnnjax import config_validation
  from configs import default
  from experiments import keras_reference
  config = load_config(path, overrides)
  config_validation.validate_config(config, default.get_config())
  if keras and config.model not in keras_reference.MODELS:
    raise ConfigError(f'{path} trains {config.model!r}, which has no Keras reference '
                      f'({", ".join(keras_reference.MODELS)} have one): pass --no-keras to '
                      'time cnnjax alone, or --vs=OTHER_CONFIG to compare two configs.')
  return config


def first_stage(config, image_shape: tuple[int, ...], num_classes: int, steps_per_epoch: int):
  """The config's first training stage, on images: its trainer and initial state, on every
  device (what the benchmarks time)."""
  from cnnjax import sharding
  from cnnjax.training import setup
  experiment = setup.build(config, image_shape, num_classes)
  mesh = sharding.create_mesh()
  trainer = experiment.trainer(0, mesh, config.eval_batch_size, on_features=False,
                               steps_per_epoch=steps_per_epoch)
  return trainer, jax.device_put(experiment.initial_state(), sharding.replicated(mesh))


class CnnjaxSide:
  """The library's training loop and evaluation, as `python -m cnnjax.main` runs them."""
  name = 'cnnjax'

  def __init__(self, config, data):
    from cnnjax.data import pipeline
    from cnnjax.training.loop import Loop
    self.data = data
    self.steps_per_epoch = pipeline.steps_per_epoch(len(data.train), config.batch_size)
    self.trainer, state = first_stage(config, data.image_shape, data.num_classes,
                                      self.steps_per_epoch)
    self.loop = Loop(state, self.trainer.empty_metrics(), mesh=self.trainer.mesh,
                     batch_size=config.batch_size, seed=config.seed,
                     steps_per_epoch=self.steps_per_epoch)
    self.epoch = 0

  def _run(self, first_step: int, end_step: int, hooks=()) -> None:
    """The loop from `first_step` to `end_step` (each measured epoch starts at its own)."""
    self.loop.step, self.loop.hooks = first_step, list(hooks)
    self.loop.run(self.trainer, self.data, end_step)
    jax.block_until_ready((self.loop.state, self.loop.running))

  def warm_up(self, steps: int) -> float:
    start = time.perf_counter()
    self._run(0, steps)
    self.trainer.evaluate(self.loop.state, self.data.test)  # Compiles the eval step.
    return time.perf_counter() - start

  def train_epoch(self) -> dict:
    """One epoch as `train.py` runs it (no per-step sync), then per-step times apart."""
    first = self.epoch * self.steps_per_epoch
    start = time.perf_counter()
    self._run(first, first + self.steps_per_epoch)
    epoch_seconds = time.perf_counter() - start
    accuracy = float(self.loop.running.compute()['accuracy'])
    timer = StepTimer()  # Synced: one step's latency, over the epoch's first batches.
    self._run(first, first + min(STEP_WINDOW, self.steps_per_epoch), [timer])
    self.epoch += 1
    return {'epoch_seconds': epoch_seconds, 'step_seconds': timer.seconds,
            'steps': self.steps_per_epoch, 'accuracy': accuracy}

  def evaluate(self) -> float:
    start = time.perf_counter()
    self.trainer.evaluate(self.loop.state, self.data.test)
    return time.perf_counter() - start


class StepTimer(Hook):
  """A loop hook timing each step to its end (it waits for the step's results)."""

  def __init__(self):
    self.seconds, self._start = [], 0.0

  def before_step(self, loop, images, labels):
    self._start = time.perf_counter()

  def after_step(self, loop, images, loss):
    jax.block_until_ready(loop.running)
    self.seconds.append(time.perf_counter() - self._start)


class KerasSide:
  """The study's Keras model, `fit` one epoch at a time, as the studies trained."""
  name = 'keras'

  def __init__(self, config, data):
    from cnnjax.data import tfds_source
    tfds_source.import_tensorflow(keep_off_accelerators=False)  # Its native lines hidden.
    import keras
    from experiments import keras_reference
    self.keras, self.config = keras, config
    self.x_train = data.train.images.astype('float32') / 255.0
    self.y_train = data.train.labels
    self.x_test = data.test.images.astype('float32') / 255.0
    self.y_test = data.test.labels
    self.model = keras_reference.build(config)
    keras_reference.compile_like_study(self.model, config)

  def _fit(self, x, y) -> dict:
    times = {'batch_ends': []}

    class Timer(self.keras.callbacks.Callback):
      def on_epoch_begin(self, epoch, logs=None):
        times['start'] = time.perf_counter()

      def on_train_batch_end(self, batch, logs=None):
        times['batch_ends'].append(time.perf_counter())

      def on_epoch_end(self, epoch, logs=None):
        times['end'], times['accuracy'] = time.perf_counter(), float(logs['accuracy'])
    self.model.fit(x, y, batch_size=self.config.batch_size, epochs=1, shuffle=True, verbose=0,
                   callbacks=[Timer()])
    ends = [times['start']] + times['batch_ends']
    return {'epoch_seconds': times['end'] - times['start'],
            'step_seconds': [b - a for a, b in zip(ends, ends[1:])],
            'steps': len(times['batch_ends']), 'accuracy': times['accuracy']}

  def warm_up(self, steps: int) -> float:
    start = time.perf_counter()
    n = steps * self.config.batch_size
    self._fit(self.x_train[:n], self.y_train[:n])
    self.model.evaluate(self.x_test[:self.config.eval_batch_size],
                        self.y_test[:self.config.eval_batch_size],
                        batch_size=self.config.eval_batch_size, verbose=0)
    return time.perf_counter() - start

  def train_epoch(self) -> dict:
    return self._fit(self.x_train, self.y_train)

  def evaluate(self) -> float:
    start = time.perf_counter()
    self.model.evaluate(self.x_test, self.y_test, batch_size=self.config.eval_batch_size,
                        verbose=0)
    return time.perf_counter() - start


def worker(side_name, config_path, overrides, connection):
  """Builds one side, then answers 'warm_up', 'epoch', 'eval' and 'stop' over `connection`.

  Each answer is ('ok', value), ('user_error', message) or ('bug', traceback); after an
  error, or when the parent is gone, the worker ends."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # The parent's to act on (`Worker`).
  cli.show_own_warnings_plainly(TOOL)  # A fresh process: data warnings as the tool's own.
  try:
    from cnnjax.data import datasets
    config = load_config(config_path, overrides)
    data = datasets.load_dataset(dataclasses.replace(datasets.DataOptions.from_config(config),
                                                    val_split=''))
    if side_name == 'keras' and data.streamed:
      raise ConfigError('the Keras side needs the data in memory; this dataset would be '
                        'streamed: pass --config.data_in_memory=true, or --no-keras.')
    side = {'cnnjax': CnnjaxSide, 'keras': KerasSide}[side_name](config, data)
    connection.send(('ok', {'train_examples': len(data.train),
                            'test_examples': len(data.test)}))
    handlers = {'warm_up': lambda: side.warm_up(3), 'epoch': side.train_epoch,
                'eval': side.evaluate}
    while (command := connection.recv()) != 'stop':
      connection.send(('ok', handlers[command]()))
  except (EOFError, ConnectionError):  # The parent stopped (a reset pipe too): no answer.
    pass
  except UserError as error:
    _answer_if_heard(connection, ('user_error', str(error)))
  except Exception:  # pylint: disable=broad-except  # A bug: the parent shows its traceback.
    _answer_if_heard(connection, ('bug', traceback.format_exc()))


def _answer_if_heard(connection, answer) -> None:
  """Sends `answer` unless the parent has gone (stopped by Ctrl-C): a send that failed
  there escaped the worker, and multiprocessing printed 'Process SpawnProcess-1:' as the
  console's last line."""
  try:
    connection.send(answer)
  except (EOFError, ConnectionError):
    pass


class Worker:
  """One side's worker process and the parent's end of its pipe."""

  def __init__(self, side: str, args):
    context = multiprocessing.get_context('spawn')
    self.side, (self.connection, child) = side, context.Pipe()
    self.process = context.Process(target=worker, args=(side, args.config, args.overrides,
                                                        child), daemon=True)
    # Ctrl-C reaches every process of the terminal's group, and the parent alone stops the
    # benchmark (`stoppable`): the worker starts with Ctrl-C blocked, and ignores it from its
    # first line. Blocked, not ignored here: the parent's handler stays in place, so a
    # Ctrl-C while the worker starts still stops the benchmark. (The resource tracker,
    # started by the first worker, unblocks signals as it starts: it is started first.)
    resource_tracker.ensure_running()
    with preemption.held_back((signal.SIGINT,)):
      self.process.start()
    child.close()  # Only the worker holds it now: if the worker dies, `recv` sees the end.
    self.sizes = self.answer()

  def ask(self, command: str):
    if _stopped_by is not None:  # A stop that came in a gc callback (see `_stop`).
      raise KeyboardInterrupt
    try:
      self.connection.send(command)
    except OSError:  # The worker is gone: `answer` says so.
      pass
    return self.answer()

  def answer(self):
    try:
      status, value = self.connection.recv()
    except (EOFError, OSError):
      self.process.join()
      raise RuntimeError(f'The {self.side} worker died (exit code {self.process.exitcode}) '
                         'without an answer.') from None
    if status != 'ok':  # The worker ends after an error: let it, so that it cleans up
      self.process.join(timeout=60)  # (a daemon killed at our exit leaks its semaphores).
    if status == 'user_error':
      raise WorkerUserError(value)
    if status == 'bug':
      raise RuntimeError(f'The {self.side} worker failed:\n{value}')
    return value

  def stop(self) -> None:
    self.connection.send('stop')
    self.process.join()


def summarise(side: str, sizes: dict, compile_seconds: float, epochs: list, evals: list,
              batch_size: int) -> dict:
  steps = [s for e in epochs for s in e['step_seconds']]
  epoch_seconds = statistics.median(e['epoch_seconds'] for e in epochs)
  return {
      'side': side, 'compile_seconds': compile_seconds,
      'steps_per_epoch': epochs[0]['steps'],
      'median_step_ms': 1000 * statistics.median(steps),
      'median_epoch_seconds': epoch_seconds,
      'epoch_seconds': [e['epoch_seconds'] for e in epochs],
      'median_eval_seconds': statistics.median(evals), 'eval_seconds': evals,
      'train_images_per_second': epochs[0]['steps'] * batch_size / epoch_seconds,
      'eval_images_per_second': sizes['test_examples'] / statistics.median(evals),
      'last_epoch_train_accuracy': epochs[-1]['accuracy'],
  }


def device_description() -> str:
  import platform
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  return (f'{jax.device_count()}x {device.device_kind} ({jax.default_backend()}), '
          f'{os.cpu_count()} CPU cores {cpu}, jax {jax.__version__}')


def compare(args) -> dict:
  import importlib.util
  sides = ['cnnjax'] + (['keras'] if args.keras and importlib.util.find_spec('keras') else [])
  config = check_config(args.config, args.overrides, keras='keras' in sides)
  workers = {side: Worker(side, args) for side in sides}
  compile_seconds = {side: w.ask('warm_up') for side, w in workers.items()}
  epochs = {side: [] for side in sides}
  evals = {side: [] for side in sides}
  for _ in range(args.epochs):  # Alternating: noise from the machine hits both sides alike.
    for side, w in workers.items():
      epochs[side].append(w.ask('epoch'))
  for _ in range(args.evals):
    for side, w in workers.items():
      evals[side].append(w.ask('eval'))
  for w in workers.values():
    w.stop()
  rows = [summarise(side, workers[side].sizes, compile_seconds[side], epochs[side], evals[side],
                    config.batch_size) for side in sides]
  report = {'config': config.name, 'batch_size': config.batch_size,
            'eval_batch_size': config.eval_batch_size, 'device': device_description(),
            'epochs_measured': args.epochs, 'rows': rows}
  if len(rows) == 2:
    ours, theirs = rows
    report['ratio_cnnjax_over_keras'] = {
        key: ours[key] / theirs[key] for key in
        ('median_step_ms', 'median_epoch_seconds', 'median_eval_seconds')}
  return report


def run_config(config_path: str, overrides: list[str], workdir: str) -> dict:
  """Runs `python -m cnnjax.main` to the end; its results and per-epoch times."""
  import subprocess
  command = [sys.executable, '-m', 'cnnjax.main', f'--config={config_path}',
             f'--workdir={workdir}', *overrides]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  errors = [line for line in result.stderr.splitlines() if line.startswith('cnnjax: error: ')]
  if result.returncode == 2 and errors:  # Its one-line report of what the user gave.
    raise WorkerUserError(f"{config_path}: {errors[-1][len('cnnjax: error: '):]}")
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    results['epoch_seconds'] = [json.loads(line)['epoch_seconds'] for line in f]
  return results


def compare_configs(args) -> dict:
  """Two configs trained end to end on the same data and overrides, one after the other."""
  import tempfile
  rows = []
  for path in (args.config, args.vs):
    check_config(path, args.overrides, keras=False)
  with tempfile.TemporaryDirectory() as tmp:
    for i, path in enumerate((args.config, args.vs)):
      results = run_config(path, args.overrides, os.path.join(tmp, str(i)))
      epochs = results['epoch_seconds']
      rows.append({'config': results['name'], 'train_seconds': results['train_seconds'],
                   # The first epoch compiles (and fills a feature cache): reported apart.
                   'first_epoch_seconds': epochs[0],
                   'median_epoch_seconds': statistics.median(epochs[1:] or epochs),
                   'feature_cache_seconds': results.get('feature_cache_seconds', 0.0),
                   'eval_seconds': results['eval_seconds'], 'steps': results['steps'],
                   'test_accuracy': results['test_accuracy'],
                   'params_trainable': results['params_trainable']})
  ratio = lambda key: rows[1][key] / rows[0][key] if rows[0][key] else float('nan')
  return {'device': device_description(), 'overrides': args.overrides, 'rows': rows,
          'train_seconds_ratio': ratio('train_seconds'),
          'first_epoch_seconds_ratio': ratio('first_epoch_seconds'),
          'median_epoch_seconds_ratio': ratio('median_epoch_seconds')}


def print_configs_table(report: dict) -> None:
  print(f"End-to-end runs, overrides {' '.join(report['overrides'])}; {report['device']}")
  print('config | steps | train s | first epoch s | median later epoch s | feature cache s | '
        'eval s | test accuracy')
  for row in report['rows']:
    print(f"{row['config']} | {row['steps']} | {row['train_seconds']:.1f} | "
          f"{row['first_epoch_seconds']:.1f} | {row['median_epoch_seconds']:.1f} | "
          f"{row['feature_cache_seconds']:.1f} | {row['eval_seconds']:.1f} | "
          f"{row['test_accuracy']:.4f}")
  print(f"ratio {report['rows'][1]['config']} / {report['rows'][0]['config']}: train time "
        f"{report['train_seconds_ratio']:.3f}, first epoch {report['first_epoch_seconds_ratio']:.3f}"
        f", later epochs (median) {report['median_epoch_seconds_ratio']:.3f}")


def print_table(report: dict) -> None:
  print(f"{report['config']}, batch {report['batch_size']} (eval {report['eval_batch_size']}), "
        f"{report['epochs_measured']} epochs each, alternating; {report['device']}")
  header = ('side', 'compile s', 'steps/epoch', 'median step ms', 'median epoch s',
            'median eval s', 'train img/s', 'eval img/s')
  print(' | '.join(header))
  for row in report['rows']:
    print(' | '.join([row['side'], f"{row['compile_seconds']:.1f}", str(row['steps_per_epoch']),
                      f"{row['median_step_ms']:.2f}", f"{row['median_epoch_seconds']:.2f}",
                      f"{row['median_eval_seconds']:.3f}", f"{row['train_images_per_second']:.0f}",
                      f"{row['eval_images_per_second']:.0f}"]))
  if 'ratio_cnnjax_over_keras' in report:
    ratio = report['ratio_cnnjax_over_keras']
    print(f"ratio cnnjax/keras: step {ratio['median_step_ms']:.2f}, epoch "
          f"{ratio['median_epoch_seconds']:.2f}, eval {ratio['median_eval_seconds']:.2f} "
          '(< 1: cnnjax is faster)')


def _stop(signum, frame):
  global _stopped_by
  _stopped_by = signum
  # Inside a gc callback (jax's), Python would print the exception and go on: `Worker.ask`
  # stops the benchmark at its next command instead.
  if frame is None or not any(frame.f_code is getattr(callback, '__code__', None)
                              for callback in gc.callbacks):
    raise KeyboardInterrupt


def stoppable(measure: Callable[[], Any], tool: str = TOOL) -> Any:
  """`measure()`, with user errors as one line (exit status 2) and SIGINT or SIGTERM as one
  line (exit status 128 + the signal), whatever the workers were doing then. The stop
  unwinds `measure` (its temporary folders go) before the process exits."""
  global _stopped_by
  _stopped_by = None
  try:
    with preemption.handling(preemption.SIGNALS, _stop), cli.reporting_user_errors(tool):
      return measure()
  # A worker killed by the same signal, too; an import the stop cut short (tensorstore's C
  # initialisation turns the KeyboardInterrupt into an ImportError).
  except (KeyboardInterrupt, RuntimeError, ImportError):
    if _stopped_by is None:
      raise
    print(exit_at_once.measuring_stopped(tool)(_stopped_by), file=sys.stderr)
    exit_at_once.after_the_last_line()
    sys.exit(128 + _stopped_by)


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None
                         ) -> argparse.Namespace:
  """`parser`'s arguments, and `--config.field=value` overrides (as `args.overrides`), in any
  order; anything else is the parser's one-line error."""
  parser.add_argument('overrides', nargs='*', help='--config.field=value overrides.')
  args, unknown = parser.parse_known_args(argv)
  args.overrides = args.overrides + unknown
  stray = [o for o in args.overrides if not o.startswith('--config.')]
  if stray:
    parser.error(f'unrecognized arguments: {" ".join(stray)} (config fields go as '
                 '--config.field=value)')
  return args


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(description=__doc__, passthrough=('--config.',),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', type=os.path.expanduser,
                      default=os.path.join(REPO_ROOT, 'configs', 'cnn_simple.py'))
  parser.add_argument('--local_data_dir', type=os.path.expanduser, default='')
  parser.add_argument('--epochs', type=int, help='Epochs measured per side (3).')
  parser.add_argument('--evals', type=int, help='Test evaluations per side (5).')
  parser.add_argument('--keras', action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument('--ops', action='store_true', help='Benchmark the op rewrites instead.')
  parser.add_argument('--vs', type=os.path.expanduser,
                      default='', help='A second cnnjax config to run end to end.')
  parser.add_argument('--json', action='store_true', help='Print JSON instead of a table.')
  args = parse_with_overrides(parser, argv)
  if args.vs and (args.epochs, args.evals) != (None, None):  # Else taken and not used.
    parser.error('--epochs and --evals time the side-by-side comparison; with --vs each config '
                 'trains end to end, as long as its file says: shorten both with '
                 '--config.num_epochs=N.')
  args.epochs = 3 if args.epochs is None else args.epochs
  args.evals = 5 if args.evals is None else args.evals
  if args.epochs < 1 or args.evals < 1:
    parser.error('--epochs and --evals must be 1 or more.')
  if args.local_data_dir:
    args.overrides.append(f'--config.local_data_dir={args.local_data_dir}')
  if args.ops:
    from experiments import op_benchmarks
    report = op_benchmarks.run()
    print(json.dumps(report, indent=2) if args.json else op_benchmarks.format_report(report))
    return
  def measure() -> dict:
    # The workers start jax's backend, each in its own process: a mistake in XLA_FLAGS
    # would end each in XLA's fatal line.
    from cnnjax import sharding
    sharding.check_xla_flags()
    return compare_configs(args) if args.vs else compare(args)
  report = stoppable(measure)
  if args.json:
    print(json.dumps(report, indent=2))
  else:
    (print_configs_table if args.vs else print_table)(report)


if __name__ == '__main__':
  main()
