"""The experiment scripts: the ablation table and the suites' "beyond the study" rows."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


def test_ablation_trains_each_used_piece_removed_once(tmp_path, mock_tfds):
  from experiments import ablation
  config_file = tmp_path / 'tiny_recipe.py'
  config_file.write_text(
      'from configs import cnn_simple\n\n\ndef get_config():\n'
      '  config = cnn_simple.get_config()\n'
      '  config.name = "tiny_recipe"\n'
      '  config.update(batch_size=8, eval_batch_size=16, num_epochs=2, label_smoothing=0.1,\n'
      '                ema_decay=0.9, train_split="train[:75%]", val_split="train[75%:]")\n'
      '  config.selection.monitor = "val_loss"\n'
      '  return config\n')
  path = ablation.main([f'--config={config_file}', f'--workdir_root={tmp_path}/runs',
                        f'--results_dir={tmp_path}/results'])
  table = open(path).read()
  rows = [line.split(' | ')[0] for line in table.splitlines() if line.startswith('| ')][1:]
  assert rows == ['| full recipe', '| without label smoothing', '| without EMA of the weights',
                  '| without best-epoch selection (last epoch instead)']
  recorded = json.load(open(tmp_path / 'results' / 'tiny_recipe_ablation.json'))
  assert [r['key'] for r in recorded] == ['full', 'label_smoothing', 'ema', 'selection']
  saved = json.load(open(tmp_path / 'runs' / 'ema' / 'config.json'))
  assert saved['ema_decay'] == 0.0 and saved['label_smoothing'] == 0.1
  # The full recipe's row is the reference; the others say how far they are from it.
  full = recorded[0]['results']['test_accuracy']
  without_ema = recorded[2]['results']['test_accuracy']
  assert f'{(without_ema - full) * 100:+.2f} pt' in table


def test_evaluation_only_pieces_give_what_training_without_them_gives(tmp_path, mock_tfds):
  from experiments import ablation
  from tests.helpers import train_and_evaluate
  config_file = tmp_path / 'tiny_ema.py'
  config_file.write_text(
      'from configs import cnn_simple\n\n\ndef get_config():\n'
      '  config = cnn_simple.get_config()\n'
      '  config.name = "tiny_ema"\n'
      '  config.update(batch_size=8, eval_batch_size=16, num_epochs=2, ema_decay=0.9)\n'
      '  config.augment.flip_test = True\n'
      '  return config\n')
  ablation.main([f'--config={config_file}', f'--workdir_root={tmp_path}/runs',
                 f'--results_dir={tmp_path}/results'])
  recorded = json.load(open(tmp_path / 'results' / 'tiny_ema_ablation.json'))
  assert [r['key'] for r in recorded] == ['full', 'flip_test', 'ema']
  assert not (tmp_path / 'runs' / 'ema').exists()  # Evaluated, not trained.
  for key, overrides in (('ema', {'ema_decay': 0.0}), ('flip_test', {'augment.flip_test': False})):
    config = ablation.load_config(str(config_file))
    ablation.apply(config, overrides)
    trained = train_and_evaluate(config, tmp_path / f'trained-{key}')
    evaluated = next(r['results'] for r in recorded if r['key'] == key)
    assert evaluated['test_loss'] == pytest.approx(trained['test_loss'], rel=1e-6)
    assert evaluated['test_accuracy'] == trained['test_accuracy']


@pytest.mark.parametrize('epochs', ['0', '-2'])
def test_ablation_refuses_no_epochs_in_its_own_flags_words(epochs, tmp_path, capsys):
  """0 ran the config's full length without a word; -2 was refused as config.num_epochs,
  a field the command line never named."""
  from experiments import ablation
  with pytest.raises(SystemExit) as stopped:
    ablation.main([f'--config={REPO_ROOT}/configs/cnn_simple.py', '--epochs', epochs,
                   f'--workdir_root={tmp_path}/runs', f'--results_dir={tmp_path}/results'])
  assert stopped.value.code == 2
  assert f'error: --epochs={epochs}: give 1 or more' in capsys.readouterr().err
  assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('only, message', [
    ('batchnorm', "--only: unknown piece(s) ['batchnorm']; the pieces: batch_norm, crop_flip"),
    # A piece the config does not use was left out without a word: the table held none.
    ('ema', "configs/cnn_simple.py does not use ['ema'], so there is nothing to remove; the "
     'pieces it uses: none.')])
def test_ablation_refuses_pieces_it_cannot_remove_in_one_line(only, message, tmp_path, capsys):
  from experiments import ablation
  with pytest.raises(SystemExit) as stopped:  # Exit status 1 before, for an unknown piece.
    ablation.main([f'--config={REPO_ROOT}/configs/cnn_simple.py', f'--only={only}',
                   f'--workdir_root={tmp_path}/runs', f'--results_dir={tmp_path}/results'])
  assert stopped.value.code == 2
  (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
  assert message in line and ': error: --only: ' in line, line  # (prog: run in-process.)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('script', ['ablation', 'reproduce'])
def test_a_results_or_runs_folder_that_cannot_be_written_is_refused_before_training(
    script, tmp_path, capsys):
  """The pages are written after every run has trained: a --results_dir that is a file ended
  the script there, hours in, in NotADirectoryError."""
  import importlib
  main = importlib.import_module(f'experiments.{script}').main
  first = ([f'--config={REPO_ROOT}/configs/cnn_simple.py'] if script == 'ablation'
           else ['--suite=fashion_mnist', '--quick', '--only=mlp_128_64'])
  (tmp_path / 'notes.md').write_text('mine')
  (tmp_path / 'drive').symlink_to(tmp_path / 'unmounted')
  for folders, message in (
      ([f'--results_dir={tmp_path}/notes.md', f'--workdir_root={tmp_path}/runs'],
       f'--results_dir={tmp_path}/notes.md is a file, not a directory'),
      ([f'--results_dir={tmp_path}/results', f'--workdir_root={tmp_path}/drive/runs'],
       f'{tmp_path}/drive is a link to {tmp_path}/unmounted, which does not exist')):
    with pytest.raises(SystemExit) as stopped:
      main(first + folders)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['drive', 'notes.md']


def test_reproduce_only_keeps_the_other_recorded_rows(tmp_path, mock_tfds_64):
  from experiments import reproduce
  common = ['--suite=fashion_mnist', '--quick', f'--workdir_root={tmp_path}/runs',
            f'--results_dir={tmp_path}/results']
  first = open(reproduce.main(common + ['--only=mlp_128_64'])).read()
  both = open(reproduce.main(common + ['--only=cnn_simple'])).read()
  mlp_row = next(line for line in first.splitlines() if line.startswith('| `mlp_128_64`'))
  rows = [line.split('`')[1] for line in both.splitlines() if line.startswith('| `')]
  assert rows == ['mlp_128_64', 'cnn_simple'] and mlp_row in both
  assert 'could not run' not in both  # Both rows are runs (a batch of 64 fits the data).


@pytest.mark.parametrize('recorded', ['[{"name": "mlp_128_64", "res', '{"mlp_128_64": {}}'])
def test_reproduce_names_an_unreadable_record_before_training(recorded, tmp_path, capsys):
  """The suite's record of earlier runs, cut off or edited by hand, was a traceback."""
  from experiments import reproduce
  (tmp_path / 'fashion_mnist.json').write_text(recorded)
  with pytest.raises(SystemExit) as exit_info:
    reproduce.main(['--suite=fashion_mnist', '--only=mlp_128_64', f'--results_dir={tmp_path}',
                    f'--workdir_root={tmp_path}/runs'])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and 'Traceback' not in err
  assert err.strip().splitlines()[-1].startswith(
      f'reproduce.py: error: {tmp_path}/fashion_mnist.json is unreadable (')
  assert not (tmp_path / 'runs').exists()  # Nothing trained.


def test_reproduce_never_replaces_a_recorded_run_with_a_failure(tmp_path, mock_tfds_64,
                                                               capsys):
  from experiments import reproduce
  results = tmp_path / 'results'
  common = ['--suite=fashion_mnist', '--quick', f'--results_dir={results}']
  page = reproduce.main(common + ['--only=mlp_128_64', f'--workdir_root={tmp_path}/runs'])
  recorded = open(page).read()
  mlp_row = next(line for line in recorded.splitlines() if line.startswith('| `mlp_128_64`'))
  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'mlp_128_64').write_text('not a workdir')  # Its run fails: a file, not a directory.
  with pytest.raises(SystemExit) as exit_info:  # Nothing ran: the page stays as it was.
    reproduce.main(common + ['--only=mlp_128_64', f'--workdir_root={broken}'])
  assert exit_info.value.code == 2 and open(page).read() == recorded
  assert 'reproduce.py: error: no config ran (mlp_128_64: could not run:' in capsys.readouterr().err
  both = open(reproduce.main(common + ['--only=mlp_128_64,cnn_simple',
                                       f'--workdir_root={broken}'])).read()
  assert mlp_row in both and '| `cnn_simple` |' in both
  assert '`mlp_128_64` could not run this time: their rows are as this page recorded' in both
  with pytest.raises(SystemExit) as exit_info:
    reproduce.main(common + [f'--local_data_dir={tmp_path}/nowhere'])
  assert exit_info.value.code == 2 and open(page).read() == both


def test_a_longer_finished_run_is_never_taken_for_the_one_asked(tmp_path, mock_tfds_64,
                                                                monkeypatch, capsys):
  """A workdir holding a longer finished run reports that run: a script setting it beside
  runs of the length asked compared lengths, not recipes."""
  from experiments import ablation
  from experiments import reproduce
  from cnnjax import train
  from configs import cnn_simple
  config = cnn_simple.get_config()
  config.update(num_epochs=2, num_train_steps=0)
  assert train.trained_longer_than_asked(config, {'steps': 10, 'epochs': 2.0}) is None
  assert train.trained_longer_than_asked(config, {'steps': 7, 'epochs': 1.4}) is None  # Stopped.
  config.num_epochs = 1
  assert 'finished run of 10 steps (2 epochs), more than the 5 asked for' in (
      train.trained_longer_than_asked(config, {'steps': 10, 'epochs': 2.0}))
  config.update(num_epochs=2, num_train_steps=3)
  assert 'more than the 3 asked for' in train.trained_longer_than_asked(
      config, {'steps': 10, 'epochs': 2.0})
  common = ['--suite=fashion_mnist', '--quick', '--only=mlp_128_64',
            f'--workdir_root={tmp_path}/runs', f'--results_dir={tmp_path}/results']
  monkeypatch.setattr(reproduce, 'QUICK_STEPS', 4)
  page = reproduce.main(common)
  recorded = open(page).read()
  monkeypatch.setattr(reproduce, 'QUICK_STEPS', 2)
  with pytest.raises(SystemExit) as exit_info:
    reproduce.main(common)
  assert exit_info.value.code == 2 and open(page).read() == recorded
  assert ('no config ran (mlp_128_64: not listed: its workdir holds a finished run of 4 steps'
          in capsys.readouterr().err)

  config_file = tmp_path / 'tiny_recipe.py'
  config_file.write_text(
      'from configs import mlp_128_64\n\n\ndef get_config():\n'
      '  config = mlp_128_64.get_config()\n'
      '  config.update(name="tiny", num_epochs=2, label_smoothing=0.1)\n'
      '  return config\n')
  flags = [f'--config={config_file}', f'--workdir_root={tmp_path}/ablation',
           f'--results_dir={tmp_path}/results']
  table = open(ablation.main(flags)).read()
  with pytest.raises(SystemExit) as exit_info:
    ablation.main(flags + ['--epochs=1'])
  assert exit_info.value.code == 2
  assert open(tmp_path / 'results' / 'tiny_ablation.md').read() == table
  assert 'ablation.py: error: full: its workdir holds a finished run of ' in capsys.readouterr().err


def test_every_suite_ends_with_its_config_beyond_the_study():
  from experiments import reproduce
  for suite, configs in reproduce.SUITES.items():
    assert reproduce.BEYOND[configs[-1]] in configs
    assert os.path.exists(os.path.join(REPO_ROOT, 'configs', f'{configs[-1]}.py'))


def test_benchmark_vs_reports_the_first_epoch_apart(tmp_path, capsys):
  import argparse
  from experiments import benchmark
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))
  configs = os.path.join(REPO_ROOT, 'configs')
  args = argparse.Namespace(
      config=os.path.join(configs, 'mlp_128_64.py'), vs=os.path.join(configs, 'cnn_simple.py'),
      overrides=[f'--config.local_data_dir={tmp_path}', '--config.batch_size=8',
                 '--config.num_epochs=3', '--config.eval_batch_size=10'])
  report = benchmark.compare_configs(args)
  for row in report['rows']:
    assert row['steps'] == 15  # 40 examples, batch 8: 5 steps an epoch, 3 epochs.
  later = [row['median_epoch_seconds'] for row in report['rows']]
  assert report['median_epoch_seconds_ratio'] == later[1] / later[0]
  benchmark.print_configs_table(report)
  printed = capsys.readouterr().out
  assert 'first epoch' in printed and 'later epochs (median)' in printed


@pytest.fixture
def tiny_op_benchmarks(monkeypatch):
  """`experiments.op_benchmarks` on shapes small enough to compile and time in seconds."""
  import functools
  from experiments import op_benchmarks as ops
  monkeypatch.setattr(ops, 'POOL_SHAPES', ((2, 6, 6, 3),))
  monkeypatch.setattr(ops, 'CONV_SHAPES', ((2, 6, 6, 1, 4), (2, 6, 6, 4, 8)))
  monkeypatch.setattr(ops, 'DEPTHWISE_SHAPES', ((2, 8, 8, 4, 1), (2, 8, 8, 4, 2)))
  monkeypatch.setattr(ops, 'IMAGE_CONV_SHAPES', ((2, 6, 6, 1, 4, 'SAME'),
                                                 (2, 6, 6, 3, 4, 'VALID')))
  monkeypatch.setattr(ops, 'DROPOUT_SHAPES', ((16, 8, 8, 16), (64, 256)))
  monkeypatch.setattr(ops, 'FIRST_BLOCK_SHAPE', (2, 6, 6, 4))
  monkeypatch.setattr(ops, 'median_ms', functools.partial(ops.median_ms, repeats=2))
  return ops


def test_op_benchmarks_check_each_rewrite_then_time_both_sides(tiny_op_benchmarks):
  ops = tiny_op_benchmarks
  report = ops.run()
  rows = report['rows']
  assert all(r['reference_ms'] > 0 and r['cnnjax_ms'] > 0 for r in rows)
  assert all(r['ratio'] == r['cnnjax_ms'] / r['reference_ms'] for r in rows)
  passes = [r for r in rows if 'cnnjax_gflop_per_s' in r]
  assert [(r['op'].split(',')[0], r['shape']) for r in passes] == [
      (f'conv3x3 {name}', shape) for shape in ((2, 6, 6, 1, 4), (2, 6, 6, 4, 8))
      for name in ('forward', 'input gradient', 'kernel gradient')]
  flop = 2 * 2 * 6 * 6 * 4 * 8 * 9  # The second shape: 2x6x6x4 -> 8 features, 3x3.
  assert passes[-1]['cnnjax_gflop_per_s'] == pytest.approx(flop / passes[-1]['cnnjax_ms'] / 1e6)
  lines = ops.format_report(report).splitlines()
  assert len(lines) == 2 + len(rows)
  assert lines[-1].startswith('dropout 0.25') and lines[2].startswith('max_pool_2x2')


def test_op_benchmarks_refuse_to_time_a_rewrite_that_differs(tiny_op_benchmarks, monkeypatch):
  from cnnjax.models import layers
  monkeypatch.setattr(layers, 'max_pool_2x2', lambda x: layers._windows_2x2(x).mean(axis=(2, 4)))
  with pytest.raises(AssertionError):
    tiny_op_benchmarks.run()


def benchmark_args(data_dir, *extra):
  return [f'--config={REPO_ROOT}/configs/cnn_simple.py', f'--local_data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=10', *extra]


BENCHMARK_CASES = {  # Each checked before a worker starts, or by a worker and sent back.
    'config file missing': (['--config=nope.py'], 'cannot load the config file'),
    'flag typo': (['--confg=configs/cnn_simple.py'],
                  'unrecognized flag --confg; did you mean --config?'),
    'unknown config field': (['--config.batchsize=3'], "config field 'batchsize' does not"),
    'no epochs': (['--epochs=0'], '--epochs and --evals must be 1 or more'),
    'a config field without its value': (['--no-keras', '--config.name', '--config.seed=3'],
                                         '--config.name was given no value'),
    'model without a Keras reference': (
        [f'--config={REPO_ROOT}/configs/vgg_scratch.py'], 'has no Keras reference'),
    'empty split (found by the worker)': (['--no-keras', '--config.train_split=train[:0]'],
                                          'selects no example'),
    'empty split, two configs': ([f'--vs={REPO_ROOT}/configs/mlp_128_64.py',
                                  '--config.train_split=train[:0]'], 'selects no example'),
    # Taken, then not used: the two configs trained their files' full length.
    'epochs with two configs': ([f'--vs={REPO_ROOT}/configs/mlp_128_64.py', '--epochs=1'],
                                'with --vs each config trains end to end, as long as its file '
                                'says: shorten both with --config.num_epochs=N'),
}


@pytest.mark.parametrize('case', sorted(BENCHMARK_CASES))
def test_benchmark_bad_input_is_one_line(case, tmp_path):
  from tests.helpers import make_idx_dataset, run_tool
  make_idx_dataset(str(tmp_path))
  extra, message = BENCHMARK_CASES[case]
  result = run_tool('experiments.benchmark', benchmark_args(tmp_path, *extra), tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if 'error:' in line]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_benchmark_workers_warn_as_the_tool_does(tmp_path):
  """A worker is a fresh process: its data warnings came as Python's 'WARNING:root:'."""
  from tests.helpers import make_idx_dataset, run_tool
  make_idx_dataset(str(tmp_path))
  result = run_tool('experiments.benchmark', benchmark_args(
      tmp_path, '--no-keras', '--epochs=1', '--evals=1', '--config.train_split=train[:20]',
      '--config.test_split=train[:10]'), tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  warnings = [line for line in result.stderr.splitlines() if 'warning' in line.lower()]
  assert warnings and all(line.startswith('benchmark.py: warning: ') for line in warnings), (
      warnings)
  assert any('share 10 examples' in line for line in warnings)


def test_a_benchmark_against_keras_shows_nothing_of_tensorflows_own(tmp_path):
  """The Keras side imported TensorFlow as it was: absl's banner, 'oneDNN custom operations
  are on' and 'Could not find cuda drivers', twice, then its device probe's 'failed call to
  cuInit' (with TF_CPP_MIN_LOG_LEVEL as JAX sets it where the user did not)."""
  from tests.helpers import make_idx_dataset, run_tool
  make_idx_dataset(str(tmp_path))
  result = run_tool('experiments.benchmark', benchmark_args(tmp_path, '--epochs=1', '--evals=1'),
                    tmp_path, env_extra={'TF_CPP_MIN_LOG_LEVEL': '1'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == '', result.stderr[-2000:]
  assert 'ratio cnnjax/keras' in result.stdout


def test_benchmark_times_cnnjax_alone_and_a_dead_worker_ends_it(tmp_path, capsys):
  import argparse
  import signal
  from experiments import benchmark
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))  # 40 train, 20 test: 5 steps of 8.
  benchmark.main(benchmark_args(tmp_path, '--no-keras', '--epochs=2', '--evals=2', '--json'))
  report = json.loads(capsys.readouterr().out)
  (row,) = report['rows']
  assert row['side'] == 'cnnjax' and row['steps_per_epoch'] == 5
  assert len(row['epoch_seconds']) == 2 and len(row['eval_seconds']) == 2
  assert 'ratio_cnnjax_over_keras' not in report
  args = argparse.Namespace(config=f'{REPO_ROOT}/configs/cnn_simple.py',
                            overrides=benchmark_args(tmp_path)[2:] +
                            [f'--config.local_data_dir={tmp_path}'])
  worker = benchmark.Worker('cnnjax', args)
  assert worker.sizes == {'train_examples': 40, 'test_examples': 20}
  os.kill(worker.process.pid, signal.SIGKILL)
  with pytest.raises(RuntimeError, match='cnnjax worker died'):
    worker.ask('epoch')


def test_a_benchmark_worker_that_refuses_has_ended_when_its_error_is_raised(tmp_path):
  """Killed as a daemon at the parent's exit, a worker mid-way through its own ending leaked
  what it held (TFDS's progress bars: a semaphore), and Python's warning about it came after
  the error line."""
  import argparse
  import multiprocessing
  from experiments import benchmark
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))
  args = argparse.Namespace(config=f'{REPO_ROOT}/configs/cnn_simple.py',
                            overrides=[f'--config.local_data_dir={tmp_path}',
                                       '--config.train_split=train[:0]'])
  with pytest.raises(benchmark.WorkerUserError, match='selects no example'):
    benchmark.Worker('cnnjax', args)
  assert multiprocessing.active_children() == []


def test_a_ctrl_c_while_a_benchmark_worker_starts_stops_the_benchmark(
    tmp_path, monkeypatch, capsys):
  """The worker is started with Ctrl-C ignored, which it keeps; the parent ignored it too for
  that while, so a Ctrl-C then was lost and the benchmark ran to its end."""
  import argparse
  import multiprocessing
  import multiprocessing.context
  import signal
  from experiments import benchmark
  from tests.helpers import make_idx_dataset
  start = multiprocessing.context.SpawnProcess.start

  def start_as_ctrl_c_comes(process):
    os.kill(os.getpid(), signal.SIGINT)
    start(process)

  monkeypatch.setattr(multiprocessing.context.SpawnProcess, 'start', start_as_ctrl_c_comes)
  make_idx_dataset(str(tmp_path))
  args = argparse.Namespace(config=f'{REPO_ROOT}/configs/cnn_simple.py',
                            overrides=[f'--config.local_data_dir={tmp_path}'])
  # As in a terminal: a test runner may have been started with SIGINT ignored.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(SystemExit) as stopped:
      benchmark.stoppable(lambda: benchmark.Worker('cnnjax', args))
  finally:
    signal.signal(signal.SIGINT, before)
    for child in multiprocessing.active_children():
      child.terminate()
      child.join()
  assert stopped.value.code == 128 + signal.SIGINT
  assert capsys.readouterr().err.startswith('benchmark.py: stopped by SIGINT;')


def test_a_ctrl_c_inside_a_gc_callback_stops_the_benchmark_at_its_next_command(monkeypatch):
  """Raised inside a gc callback (jax registers one), the KeyboardInterrupt was printed as
  'Exception ignored' and lost: the benchmark ran to its end."""
  import gc
  import signal
  import sys
  import types
  from experiments import benchmark
  monkeypatch.setattr(benchmark, '_stopped_by', None)

  def callback(*args):
    del args
    benchmark._stop(signal.SIGINT, sys._getframe())  # pylint: disable=protected-access
  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  assert benchmark._stopped_by == signal.SIGINT  # pylint: disable=protected-access
  with pytest.raises(KeyboardInterrupt):
    benchmark.Worker.ask(types.SimpleNamespace(), 'epoch')


@pytest.mark.parametrize('delay', [0.2, 1.5, 6.0])  # Importing; starting workers; measuring.
def test_benchmark_stopped_by_ctrl_c_is_one_line(delay, tmp_path):
  import signal
  from tests.helpers import ctrl_c_after, make_idx_dataset, past_a_tools_handler
  make_idx_dataset(str(tmp_path))
  if delay < 1:  # Past the handler, however slow the machine is today.
    delay = past_a_tools_handler(delay)
  process, _, stderr = ctrl_c_after(delay, ['experiments/benchmark.py', *benchmark_args(
      tmp_path, '--no-keras', '--epochs=1000')])  # Ctrl-C reaches the workers too.
  assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  assert stderr.strip().splitlines()[-1].startswith('benchmark.py: stopped by SIGINT;')


def device_benchmark_args(data_dir, *extra):
  return [f'--fashion_mnist={data_dir}', '--configs=cnn_simple', '--warmup=2', '--window=2',
          '--windows=3', '--steps_per_dispatch=2', '--peak_tflops=1', '--config.batch_size=8',
          *extra]


def test_device_benchmark_times_three_ways_and_counts_flops(tmp_path, capsys):
  from experiments import device_benchmark
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))  # 40 train: 5 steps of 8.
  device_benchmark.main(device_benchmark_args(tmp_path, f'--json={tmp_path}/h200/report.json'))
  out = capsys.readouterr().out
  report = json.loads((tmp_path / 'h200' / 'report.json').read_text())
  (result,) = report['results']
  variants = result['variants']
  assert list(variants) == ['one_step', 'calls', 'calls_bf16']
  assert [v['steps_per_dispatch'] for v in variants.values()] == [1, 2, 2]
  assert [v['data_on_device'] for v in variants.values()] == [False, True, True]
  assert variants['calls_bf16']['half_precision'] and variants['one_step']['steps_per_epoch'] == 5
  assert variants['one_step']['speedup_over_one_step'] == 1.0
  for row in variants.values():
    assert len(row['window_step_ms']) == 3 and row['step_ms'] in row['window_step_ms']
    assert row['images_per_second'] == pytest.approx(8 / (row['step_ms'] / 1e3))
  # cnn_simple's convolutions and dense layer, forward and backward, at batch 8: the lowered
  # step's count is what the FLOPs-only mode prints too.
  flops = variants['one_step']['step_flops']
  assert 1e8 < flops < 1e9 and 'GFLOP per training step' in out
  printed = float(re.search(r'cnn_simple: ([\d.]+) GFLOP per training step', out)[1])
  assert printed == pytest.approx(flops / 1e9, rel=0.05)  # It printed '0.2' for 0.168.
  assert variants['calls']['model_flop_utilisation'] == pytest.approx(
      flops / (variants['calls']['step_ms'] / 1e3) / 1e12)
  device_benchmark.main(device_benchmark_args(tmp_path, '--flops_only'))
  assert json.loads(capsys.readouterr().out)['cnn_simple']['step_flops'] == flops


def test_device_benchmark_counts_flops_on_the_host_where_the_backend_counts_none(
    tmp_path, capsys, monkeypatch):
  """GPUs and TPUs (PJRT's C API) give no lowered cost analysis: the count, and so the MFU,
  comes from the same script's FLOPs-only run on the CPU, in a subprocess."""
  from experiments import device_benchmark
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))
  device_benchmark.main(device_benchmark_args(tmp_path, '--flops_only'))
  flops = json.loads(capsys.readouterr().out)['cnn_simple']['step_flops']
  monkeypatch.setattr(device_benchmark, 'step_flops', lambda *args: None)
  device_benchmark.main(device_benchmark_args(tmp_path, f'--json={tmp_path}/report.json'))
  one_step, calls, _ = json.loads((tmp_path / 'report.json').read_text()
                                  )['results'][0]['variants'].values()
  assert one_step['step_flops'] == flops and one_step['step_flops_counted_on'] == 'cpu'
  assert calls['model_flop_utilisation'] == pytest.approx(flops / (calls['step_ms'] / 1e3) / 1e12)
  # Where the host gives none either, the report goes on without an MFU, and says why.
  import shutil
  monkeypatch.setattr(device_benchmark.sys, 'executable', shutil.which('false'))
  device_benchmark.main(device_benchmark_args(tmp_path, f'--json={tmp_path}/report.json'))
  one_step, calls, _ = json.loads((tmp_path / 'report.json').read_text()
                                  )['results'][0]['variants'].values()
  assert one_step['step_flops'] is None and 'model_flop_utilisation' not in calls
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      'device_benchmark.py: no FLOP count for cnn_simple from the host CPU either (exit status '
      "1); its MFU is left out.")


@pytest.mark.parametrize('extra,message', [
    (['--configs=cnn_simpel'], 'no configs/cnn_simpel.py'),
    (['--config.batchsize=3'], "config field 'batchsize' does not"),
    (['--stepz=3'], 'unrecognized flag --stepz'),
    (['--fashion_mnist={missing}'], "local_data_dir='{missing}' does not exist"),
    # Where the report is to go: checked before the device time is spent, not after it.
    (['--json={tmp}'], '--json={tmp} is a folder; name a file in it'),
    (['--json={tmp}/t10k-labels-idx1-ubyte.gz/report.json'],
     'its folder {tmp}/t10k-labels-idx1-ubyte.gz is a file, not a directory'),
    # Timing flags out of range: a ZeroDivisionError, a median of nothing, a negative MFU.
    (['--window=0'], '--warmup, --window and --windows must be 1 or more'),
    (['--windows=-1'], '--warmup, --window and --windows must be 1 or more'),
    (['--warmup=0'], '--warmup, --window and --windows must be 1 or more'),
    (['--peak_tflops=-5'], '--steps_per_dispatch and --peak_tflops must be 0 (the default)'),
    (['--steps_per_dispatch=-1'], '--steps_per_dispatch and --peak_tflops must be 0'),
])
def test_device_benchmark_bad_input_is_one_line(extra, message, tmp_path):
  """The missing folder is one under the test's own directory: a fixed path such as
  /nonexistent exists wherever a program once ran with HOME pointing there."""
  from tests.helpers import make_idx_dataset, run_tool
  make_idx_dataset(str(tmp_path))
  missing, tmp = str(tmp_path / 'missing'), str(tmp_path)
  extra = [arg.format(missing=missing, tmp=tmp) for arg in extra]
  message = message.format(missing=missing, tmp=tmp)
  result = run_tool('experiments.device_benchmark', device_benchmark_args(tmp_path, *extra),
                    tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if 'error:' in line]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_data_throughput_names_a_missing_archive_as_missing(tmp_path):
  """It had been 'not a .tar.gz (or .tar) of an image tree', as if the file were another."""
  result = subprocess.run([sys.executable, 'experiments/data_throughput.py',
                           f'--local_data_dir={tmp_path}/cifar.tar.gz'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'data_throughput.py: error: --local_data_dir={tmp_path}/cifar.tar.gz does not exist.')


def test_data_throughput_measures_a_small_archive_and_stops_in_one_line(tmp_path, monkeypatch):
  # A split of fewer batches than a row reads (here 1 per epoch) is read over several epochs;
  # the training-step timing had no steps left to time and ended in a traceback. A stop
  # unwinds (the unpacked copy goes) and ends in one line.
  import signal
  import tarfile
  from tests.helpers import ctrl_c_after, tiny_image_tree
  archive = str(tmp_path / 'tree.tar.gz')
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tiny_image_tree(per_class=20), arcname='.')  # 60 images, batch 32.
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  args = ['experiments/data_throughput.py', f'--local_data_dir={archive}',
          f'--config={REPO_ROOT}/configs/image_folder.py', '--max_workers=1', '--repeats=1']
  monkeypatch.setenv('TMPDIR', str(scratch))
  done = subprocess.run([sys.executable, *args, '--steps=5'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'streamed from a directory' in done.stdout.splitlines()[-1]
  process, _, stderr = ctrl_c_after(6.0, [*args, '--steps=100000'])
  assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
  assert stderr.strip().splitlines()[-1].startswith('data_throughput.py: stopped by SIGINT;')
  assert os.listdir(scratch) == []
