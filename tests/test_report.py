"""Reports, evaluation, prediction, suite tables and the notebook: what a user reads."""
import ast
import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax.data import datasets
from cnnjax import evaluate as evaluate_lib
from cnnjax.data import pipeline
from cnnjax import predict as predict_lib
from cnnjax.runs import report
from tests.helpers import (REPO_ROOT, defaults, experiment, final_state, load_config,
                           load_dataset, make_idx_dataset, shrink, train_and_evaluate)

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture
def trained(tmp_path, idx_dir):
  """A tiny cnn_simple run on local IDX files (40 train, 20 test examples)."""
  workdir = str(tmp_path / 'run')
  config = shrink(load_config('cnn_simple'), local_data_dir=idx_dir, num_train_steps=-1,
                  num_epochs=2)
  train_and_evaluate(config, workdir)
  return config, workdir


def test_report_files_match_scikit_learn_on_the_runs_predictions(trained):
  from sklearn import metrics
  config, workdir = trained
  test = load_dataset('fashion_mnist', 'train', '', 'test',
                               local_data_dir=config.local_data_dir).test
  state = final_state(config, workdir)
  logits = experiment(config).model.apply(state.variables, pipeline.to_inputs(test.images))
  predictions = np.asarray(jax.numpy.argmax(logits, -1))
  with open(os.path.join(workdir, report.CONFUSION_CSV)) as f:
    table = list(csv.reader(f))
  assert table[0][1:] == list(datasets.DATASETS['fashion_mnist'].class_names)
  matrix = np.array([[int(v) for v in row[1:]] for row in table[1:]])
  assert matrix.shape == (10, 10) and matrix.sum() == len(test) == 20
  np.testing.assert_array_equal(matrix, metrics.confusion_matrix(test.labels, predictions,
                                                                 labels=range(10)))
  saved = json.load(open(os.path.join(workdir, report.REPORT_JSON)))
  expected = metrics.classification_report(
      test.labels, predictions, labels=range(10), output_dict=True, zero_division=0,
      target_names=list(datasets.DATASETS['fashion_mnist'].class_names))
  assert saved.keys() == expected.keys()
  for name in ('Ankle boot', 'macro avg', 'weighted avg'):
    for key in ('precision', 'recall', 'f1-score', 'support'):
      assert saved[name][key] == pytest.approx(expected[name][key])
  assert saved['accuracy'] == pytest.approx(
      json.load(open(os.path.join(workdir, 'results.json')))['test_accuracy'])
  for name in (report.CURVES_FILE, report.CONFUSION_PNG):
    assert open(os.path.join(workdir, name), 'rb').read(8) == PNG_MAGIC
  assert 'precision' in open(os.path.join(workdir, report.REPORT_TXT)).read()


def test_the_report_leaves_out_classes_neither_held_nor_predicted():
  """A split without a class (or a slice of a few examples): scikit-learn's 0s for its
  precision and recall had halved the macro averages of a split classified right."""
  text, saved = report.classification_report(np.array([0, 0, 0]), np.array([0, 0, 0]),
                                             ['cat', 'dog'])
  assert 'dog' not in saved and 'dog' not in text
  assert saved['macro avg']['recall'] == saved['accuracy'] == 1.0
  _, saved = report.classification_report(np.array([0, 0, 2]), np.array([0, 1, 2]),
                                          ['cat', 'dog', 'owl', 'yak'])
  assert [k for k in saved if ' avg' not in k] == ['cat', 'dog', 'owl', 'accuracy']
  assert saved['dog'] == {'precision': 0.0, 'recall': 0.0, 'f1-score': 0.0, 'support': 0.0}
  assert saved['accuracy'] == pytest.approx(2 / 3)


def test_worst_confusions_are_the_largest_off_diagonal_counts():
  matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 7, 2]])
  pairs = report.worst_confusions(matrix, ['a', 'b', 'c'], top=2)
  assert [(p['true'], p['predicted'], p['count']) for p in pairs] == [('c', 'b', 7), ('a', 'b', 3)]
  assert pairs[0]['fraction_of_true'] == pytest.approx(7 / 9)


def test_a_read_only_home_gives_matplotlib_a_folder_of_its_own(tmp_path, monkeypatch):
  """A read-only home (a container, a shared account): matplotlib made a fresh folder at
  each run, rebuilt its font cache there, and warned twice, in absl's format, in the run's
  console. (A config home under a file plays the read-only one: tests may run as root.)"""
  import tempfile
  (tmp_path / 'home').write_text('a file, not a folder')
  monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'home' / 'config'))
  monkeypatch.delenv('MPLCONFIGDIR', raising=False)
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
  (tmp_path / 'tmp').mkdir()
  report._writable_matplotlib_folder()  # pylint: disable=protected-access
  folder = os.environ['MPLCONFIGDIR']
  assert folder == str(tmp_path / 'tmp' / f'cnnjax-matplotlib-{os.getuid()}')
  assert os.path.isdir(folder) and os.stat(folder).st_mode & 0o777 == 0o700
  monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'writable'))  # A home as usual:
  monkeypatch.delenv('MPLCONFIGDIR')
  report._writable_matplotlib_folder()  # pylint: disable=protected-access
  assert 'MPLCONFIGDIR' not in os.environ  # matplotlib's own folder is used.


def test_class_names_the_font_lacks_are_drawn_without_a_warning(tmp_path, recwarn):
  names = ['dög 🐕', '猫', 'bird']
  path = str(tmp_path / 'matrix.png')
  report.plot_confusion_matrix(np.array([[2, 1, 0], [0, 3, 0], [1, 0, 2]]), names, path, 'run 🐕')
  assert [str(w.message) for w in recwarn] == []
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC


@pytest.mark.parametrize('num_classes,texts,named', [(3, 9, 3), (30, 900, 30), (100, 0, 100),
                                                      (1000, 0, 100)])
def test_many_classes_make_a_confusion_matrix_of_bounded_size(num_classes, texts, named,
                                                              tmp_path, monkeypatch):
  """ImageNet's 1000 classes drew a 652-inch figure with a million texts after all the
  training: the counts are written in the cells only while they fit, the names thinned out
  to a hundred, and the figure stops growing."""
  from PIL import Image
  drawn = []
  save_figure = report.save_figure
  monkeypatch.setattr(report, 'save_figure',
                      lambda figure, path: (drawn.append(figure), save_figure(figure, path)))
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, 5 * num_classes)
  matrix = report.confusion_matrix(labels, labels, num_classes)
  path = str(tmp_path / 'matrix.png')
  report.plot_confusion_matrix(matrix, [f'class {i}' for i in range(num_classes)], path, 'run')
  ax = drawn[0].axes[0]
  assert len(ax.texts) == texts
  assert len(ax.get_xticklabels()) == len(ax.get_yticklabels()) == named
  assert ax.get_yticklabels()[1].get_text() == f'class {num_classes // named}'
  assert max(drawn[0].get_size_inches()) <= report.MAX_FIGURE_INCHES + 1
  assert max(Image.open(path).size) <= 120 * (report.MAX_FIGURE_INCHES + 1)


def test_evaluate_a_stopped_run_from_its_latest_checkpoint(tmp_path, idx_dir, capsys):
  workdir = str(tmp_path / 'stopped')
  config = shrink(load_config('cnn_simple'), local_data_dir=idx_dir, num_train_steps=4,
                  num_epochs=3)
  train_and_evaluate(config, workdir)
  for name in ('results.json', report.CONFUSION_PNG):  # As if it had been stopped.
    os.remove(os.path.join(workdir, name))
  evaluation = evaluate_lib.evaluate(workdir, defaults())
  assert evaluation['step'] == 4 and evaluation['examples'] == 20
  assert os.path.exists(os.path.join(workdir, report.CONFUSION_PNG))
  assert json.load(open(os.path.join(workdir, 'evaluation.json')))['step'] == 4
  assert 'at step 4 on test (20 examples)' in capsys.readouterr().out
  # Trained on, the run rewrites its reports: the record of step 4's evaluation goes.
  config.num_train_steps = 6
  train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'evaluation.json'))
  assert os.path.exists(os.path.join(workdir, report.CONFUSION_PNG))


def test_evaluating_another_split_or_data_keeps_the_runs_reports(trained, tmp_path, capsys):
  import shutil
  from tests.helpers import tree_digest
  config, workdir = trained
  own = tree_digest(workdir)
  train = evaluate_lib.evaluate(workdir, defaults(), split='train[:30]')
  other_dir = tmp_path / 'shifted'
  other_dir.mkdir()
  make_idx_dataset(str(other_dir), seed=1)  # Other examples under the same split names.
  other = evaluate_lib.evaluate(workdir, defaults(), local_data_dir=str(other_dir))
  assert {k: v for k, v in tree_digest(workdir).items()
          if not k.startswith('evaluations')} == own  # The test split's reports, untouched.
  for folder, evaluation, examples in (('train[..30]', train, 30), ('shifted-test', other, 20)):
    saved = json.load(open(os.path.join(workdir, 'evaluations', folder, 'evaluation.json')))
    assert saved == evaluation and saved['examples'] == examples
    table = list(csv.reader(open(os.path.join(workdir, 'evaluations', folder,
                                              report.CONFUSION_CSV))))
    assert sum(int(v) for row in table[1:] for v in row[1:]) == examples
  assert other['local_data_dir'] == str(other_dir)
  out = capsys.readouterr().out
  assert f"Reports in {os.path.join(workdir, 'evaluations', 'train[..30]')}." in out
  # The same examples where they are now (--local_data_dir's purpose): the run's reports.
  moved = str(tmp_path / 'moved')
  shutil.copytree(config.local_data_dir, moved)
  evaluate_lib.evaluate(workdir, defaults(), local_data_dir=moved)
  assert os.path.getmtime(os.path.join(workdir, 'evaluation.json')) > os.path.getmtime(
      os.path.join(workdir, 'results.json'))
  assert sorted(os.listdir(os.path.join(workdir, 'evaluations'))) == ['shifted-test',
                                                                      'train[..30]']


def test_evaluating_another_datasets_files_names_the_runs_dataset(trained, tmp_path):
  """The loader's way out of another dataset's files is one for training ('use
  configs/image_folder.py', 'pass --config.image_size=28'): no flag of evaluate's, whose
  data must be the run's dataset."""
  from cnnjax.data import datasets
  from tests.helpers import tiny_image_tree, write_idx
  _, workdir = trained
  larger = tmp_path / 'larger'
  larger.mkdir()
  for prefix in ('train', 't10k'):
    write_idx(str(larger / f'{prefix}-images-idx3-ubyte.gz'), np.zeros((4, 32, 32)))
    write_idx(str(larger / f'{prefix}-labels-idx1-ubyte.gz'), np.arange(4))
  for data, finding in ((tiny_image_tree(), r'\(ant, bee, wasp\) is a class of fashion_mnist'),
                        (larger, r"have shape \(32, 32, 1\); fashion_mnist's have \(28, 28, 1\)")):
    with pytest.raises(datasets.OtherDatasetError,
                       match=finding + r".*\. This run was trained on fashion_mnist: evaluate it "
                       r"on fashion_mnist's files \(--local_data_dir=DIR\), or these with a run "
                       r'trained on them\.$') as error:
      evaluate_lib.evaluate(workdir, defaults(), local_data_dir=str(data))
    assert '--config.' not in str(error.value)


def test_evaluating_a_tree_in_keras_layout_names_the_split_flag(tmp_path):
  """A tree of class folders alone is all train split; the loader's way to a test split
  is --config.test_split, which evaluate has no use for: its flag is --split."""
  import shutil
  from cnnjax.errors import UserError
  from tests.helpers import tiny_image_tree
  config = shrink(load_config('image_folder'), local_data_dir=tiny_image_tree(), image_size=16,
                  num_train_steps=1, train_split='train', val_split='')
  workdir = str(tmp_path / 'run')
  train_and_evaluate(config, workdir)
  keras_layout = shutil.copytree(os.path.join(tiny_image_tree(), 'test'), tmp_path / 'classes')
  with pytest.raises(UserError, match=r"read as the train split: there is no test/ split\. "
                     r"Evaluate on part of train, e.g\. --split='train\[90%:\]', or all of it, "
                     r'--split=train\.$'):
    evaluate_lib.evaluate(workdir, defaults(), local_data_dir=str(keras_layout))
  evaluation = evaluate_lib.evaluate(workdir, defaults(), local_data_dir=str(keras_layout),
                                     split='train')
  assert evaluation['examples'] == 30


@pytest.mark.parametrize('split,name', [('train[:80%]', 'train[..80%]'),
                                        ('test[10:20]+train[5%:]', 'test[10..20]+train[5%..]'),
                                        ('my data/v2', 'my_data_v2'), ('/', '_')])
def test_evaluation_folders_are_named_after_the_split(split, name):
  assert evaluate_lib._name_part(split) == name


def run_module(module, *args):
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  return subprocess.run([sys.executable, '-m', module, *args], env=env, capture_output=True,
                        text=True, timeout=300)


def test_evaluating_val_where_the_run_validated_on_a_slice_names_the_slice(tmp_path, idx_dir):
  from cnnjax.errors import UserError
  config = shrink(load_config('cnn_simple'), local_data_dir=idx_dir, num_train_steps=2,
                  train_split='train[:80%]', val_split='train[80%:]')
  workdir = str(tmp_path / 'run')
  train_and_evaluate(config, workdir)
  for split in ('val', 'validation'):
    with pytest.raises(UserError) as error:
      evaluate_lib.evaluate(workdir, defaults(), split=split)
    assert str(error.value).startswith(f"IDX datasets have splits ['test', 'train'], not "
                                       f"'{split}'.")
    assert str(error.value).endswith("The run validated on 'train[80%:]': "
                                     "--split='train[80%:]' evaluates that.")
  assert evaluate_lib.evaluate(workdir, defaults(), split='train[80%:]')['examples'] == 8


def test_evaluate_command_line_rejects_a_directory_without_a_run(tmp_path, monkeypatch):
  result = run_module('cnnjax.evaluate', f'--workdir={tmp_path}')
  assert result.returncode == 2
  assert 'cnnjax.evaluate: error:' in result.stderr and 'holds no cnnjax run' in result.stderr
  assert 'Traceback' not in result.stderr
  from cnnjax.runs import saved
  monkeypatch.chdir(tmp_path)
  with pytest.raises(saved.RunNotFoundError, match=r'^The current directory \(--workdir is '
                     r'empty\) holds no cnnjax run \(config.json is missing\)'):
    saved.load_config('', defaults())
  (tmp_path / 'checkpoints' / '30' / 'state').mkdir(parents=True)
  with pytest.raises(saved.RunNotFoundError, match=re.escape(
      f'{tmp_path} holds checkpoints but not the config.json of the run that made them')):
    saved.load_config(str(tmp_path), defaults())


@pytest.mark.parametrize('record, problem', [
    ('{broken', 'JSONDecodeError'),
    ('[]', 'TypeError'),
    ('{"image_shape": [28, 28], "class_names": ["a", "b"]}',
     'image_shape [28, 28] is not [height, width, channels]'),
    ('{"image_shape": [28, 28, 1.5], "class_names": ["a", "b"]}', 'image_shape [28, 28, 1.5]'),
    ('{"image_shape": [28, 28, 1], "class_names": []}',
     'class_names [] is not a list of two or more names'),
    ('{"image_shape": [28, 28, 1], "class_names": "ab"}', "class_names 'ab' is not a list"),
])
def test_a_dataset_record_edited_by_hand_is_named_not_used(record, problem, tmp_path):
  """No classes had been a division by zero deep in the model; a string, two classes."""
  (tmp_path / 'dataset.json').write_text(record)
  with pytest.raises(datasets.DatasetRecordError, match=re.escape(
      f'{tmp_path}/dataset.json is unreadable (') + '.*' + re.escape(problem)):
    datasets.saved_spec(str(tmp_path), datasets.DataOptions('fashion_mnist'))


@pytest.mark.parametrize('edit, problem', [
    ({'model': 'mlpx'}, "Unknown model 'mlpx' (config.model). Registered models: "),
    ({'model_kwargs': {'hidden_sizes': [0]}},
     'config.model_kwargs.hidden_sizes must be a tuple of positive integers, got (0,)'),
    ({'model_kwargs': {'hidden_sizes': [8], 'depth': 3}}, "Model 'mlp' has no option(s) ['depth']"),
    ({'eval_batch_size': 'abc'}, "Could not override field 'eval_batch_size'"),
    ({'augment': [1]}, "Could not override field 'augment'"),
])
def test_a_run_config_edited_by_hand_is_named_not_used(edit, problem, tmp_path):
  """Each had been a traceback in cnnjax.evaluate and predict (main refuses the run as one of
  another config)."""
  (tmp_path / 'config.json').write_text(json.dumps(
      {'model': 'mlp', 'dataset': 'fashion_mnist', 'batch_size': 8,
       'model_kwargs': {'hidden_sizes': [8]}, **edit}))
  from cnnjax.runs import saved
  with pytest.raises(saved.RunNotFoundError, match=re.escape(
      f'{tmp_path}/config.json holds a config that cannot be run ({problem}')):
    saved.load_config(str(tmp_path), defaults())


def test_a_workdir_next_to_a_run_names_the_run(tmp_path):
  """The run's checkpoints/ folder, one of its files, or the folder above several runs, given
  as --workdir: the error names the --workdir to pass instead. A run is not started inside
  another (afresh, in its checkpoints/ folder, where the user meant to resume it)."""
  from cnnjax.runs import saved
  from cnnjax.runs import workdir as workdir_lib
  for name in ('beta', 'alpha'):
    (tmp_path / 'runs' / name / 'checkpoints' / '30' / 'state').mkdir(parents=True)
    (tmp_path / 'runs' / name / 'config.json').write_text(
        '{"model": "cnn_simple", "dataset": "fashion_mnist", "batch_size": 64}')
  (tmp_path / 'runs' / 'notes').mkdir()
  (tmp_path / 'config.json').write_text('{"theme": "dark", "batch_size": 1}')  # Not a run's.
  alpha = tmp_path / 'runs' / 'alpha'
  for inside in (alpha / 'checkpoints', alpha / 'checkpoints' / '30' / 'state',
                 alpha / 'config.json'):
    with pytest.raises(saved.RunNotFoundError, match=re.escape(
        f'(config.json is missing). It lies inside the run {alpha}: pass --workdir={alpha}.')):
      saved.load_config(str(inside), defaults())
  with pytest.raises(saved.RunNotFoundError, match=re.escape(
      '(config.json is missing). It holds the run(s) alpha, beta: pass one of them, as in '
      f'--workdir={alpha}.')):
    saved.load_config(str(tmp_path / 'runs'), defaults())
  with pytest.raises(saved.RunNotFoundError, match=re.escape(
      '(config.json is missing). Pass the --workdir of a run started with python -m '
      'cnnjax.main.')):
    saved.load_config(str(tmp_path / 'runs' / 'notes'), defaults())
  with pytest.raises(workdir_lib.WorkdirError, match=re.escape(
      f'--workdir={alpha}/checkpoints lies inside the run in {alpha}: a run there would start '
      f'afresh within it. Pass --workdir={alpha} to resume that run, or choose a --workdir '
      'outside it.')):
    workdir_lib.check_writable(str(alpha / 'checkpoints'))
  for elsewhere in (alpha, tmp_path / 'runs' / 'notes' / 'next', tmp_path / 'runs' / 'gamma'):
    workdir_lib.check_writable(str(elsewhere))


def test_tools_import_nothing_heavy_before_their_stop_handler():
  # Numpy, jax and the rest load inside `main`, under the tool's own handler, which knows
  # what the tool is doing; a module top loading them would also make `--help` and a
  # misspelt flag take seconds.
  tools = ('cnnjax.evaluate', 'cnnjax.predict', 'cnnjax.pretrained.__main__')
  check = subprocess.run([sys.executable, '-c', f'import sys, {", ".join(tools)}; print(sorted('
                          '{"numpy", "jax", "flax", "h5py", "tensorflow"} & set(sys.modules)))'],
                         cwd=REPO_ROOT, capture_output=True, text=True)
  assert check.stdout.strip() == '[]', check.stderr[-2000:]


def test_the_first_moments_handler_imports_only_what_python_starts_with():
  # `cnnjax.main`, diagnose, pretrained and the benchmarks install it as their first statement:
  # typing or logging alone take tens of milliseconds to import on a slow machine, a window
  # where Ctrl-C prints a traceback.
  check = subprocess.run([sys.executable, '-c', 'import sys; before = set(sys.modules); '
                          'from cnnjax.runs import exit_at_once; '
                          'print(sorted(set(sys.modules) - before))'],
                         cwd=REPO_ROOT, capture_output=True, text=True)
  assert check.returncode == 0, check.stderr[-2000:]
  imported = set(ast.literal_eval(check.stdout))
  assert 'atexit' in sys.builtin_module_names  # Built into the interpreter: no file to read.
  assert imported <= {'cnnjax', 'cnnjax.runs', 'cnnjax.runs.exit_at_once', 'signal',
                      'collections.abc', 'atexit'}, check.stderr[-2000:]


def test_a_stop_line_naming_a_path_in_any_bytes_is_written():
  """A workdir named in bytes the file system's encoding does not decode holds surrogates:
  encoding the stop line raised UnicodeEncodeError inside the signal handler."""
  from cnnjax.runs import exit_at_once
  read, write = os.pipe()
  exit_at_once.say(write, 'stopped; resume with --workdir=runs/caf\udce9')
  os.close(write)
  assert os.read(read, 200) == b'stopped; resume with --workdir=runs/caf\\udce9\n'
  os.close(read)


def test_a_stop_signal_while_python_ends_leaves_the_tools_status():
  # After a run that had finished and saved all, a SIGTERM in the half second Python takes to
  # tear jax down found the signal's default action put back: the process died with no line
  # and the signal's status. Here the signal comes as the script's globals are torn down.
  script = textwrap.dedent('''
      import os, signal, sys
      from cnnjax.runs import exit_at_once
      exit_at_once.from_now(exit_at_once.stop_line('after the run ended: what it saved stands.'))

      class TornDownWithTheModules:
        def __del__(self):
          os.kill(os.getpid(), signal.SIGTERM)
          os.write(1, b'torn down\\n')

      kept = TornDownWithTheModules()
      print('done', flush=True)
      sys.exit(3)
      ''')
  ended = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)
  assert (ended.returncode, ended.stdout, ended.stderr) == (3, 'done\ntorn down\n', '')


def test_what_python_finds_while_it_ends_prints_nothing_after_the_tools_last_line():
  # A checkpoint write refused in orbax's threads left a coroutine never awaited: as the
  # machine's timing had it, Python's teardown printed its two-line RuntimeWarning after the
  # run's one-line error. Here the coroutine is a global, found as the globals go. And
  # multiprocessing's exit callback, run before ours, warned after a benchmark's stop line.
  script = textwrap.dedent('''
      import atexit, sys, warnings
      from cnnjax.runs import exit_at_once
      exit_at_once.from_now(exit_at_once.stop_line('after the run ended: what it saved stands.'))
      from cnnjax import cli

      async def write_fragment():
        pass

      kept = write_fragment()
      atexit.register(lambda: warnings.warn('ResourceTracker called reentrantly'))
      cli.exit_with_error('cnnjax', 'the one line')
      ''')
  ended = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)
  assert (ended.returncode, ended.stderr) == (2, 'cnnjax: error: the one line\n')


@pytest.mark.parametrize('tool', [
    'cnnjax/main', 'cnnjax/diagnose', 'cnnjax/evaluate', 'cnnjax/predict',
    'cnnjax/pretrained/__main__', 'experiments/benchmark', 'experiments/device_benchmark',
    'experiments/data_throughput', 'experiments/ablation', 'experiments/reproduce'])
def test_each_tool_installs_its_stop_handler_before_its_first_import(tool):
  # Evaluate, predict and the experiments' scripts first imported argparse, cnnjax.cli or
  # jax (and parsed their flags): a Ctrl-C in their first 60 ms to a second here printed a
  # KeyboardInterrupt traceback. What Python has loaded at its start (os, sys) and
  # exit_at_once itself may come first: the scripts need them to find cnnjax.
  with open(os.path.join(REPO_ROOT, f'{tool}.py')) as f:
    body = ast.parse(f.read()).body
  first = next(node for node in body if isinstance(node, (ast.Import, ast.ImportFrom, ast.If))
               and ast.unparse(node) not in ('import os', 'import sys',
                                             'from cnnjax.runs import exit_at_once'))
  assert isinstance(first, ast.If) and 'exit_at_once.from_now(' in ast.unparse(first)


def test_tools_stopped_by_ctrl_c_end_in_one_line(trained, tmp_path, idx_dir):
  import signal
  from tests.helpers import ctrl_c_after, past_a_tools_handler, tree_digest
  _, workdir = trained
  image = str(tmp_path / 'photo.png')
  Image.new('RGB', (9, 7)).save(image)
  before = tree_digest(workdir)
  nothing = 'Stopped by SIGINT before it finished (it writes nothing).'
  # After `delay` seconds a tool is past its start (its handler is in place) and still
  # importing jax or working: these tools take seconds more on the tiny run. `early`: while
  # it imports its own modules and parses its flags.
  early = past_a_tools_handler(0.1)
  untouched = "Stopped by SIGINT before writing anything: the run's files are as they were."
  for delay, argv, line in (
      (early, ['-m', 'cnnjax.evaluate', f'--workdir={workdir}'], untouched),
      (1.0, ['-m', 'cnnjax.evaluate', f'--workdir={workdir}'], untouched),
      (early, ['-m', 'cnnjax.predict', f'--workdir={workdir}', image], nothing),
      (1.0, ['-m', 'cnnjax.predict', f'--workdir={workdir}', image], nothing),
      (2.0, ['-m', 'cnnjax.diagnose', f'--config={REPO_ROOT}/configs/cnn_simple.py',
             f'--config.local_data_dir={idx_dir}', '--config.batch_size=8',
             '--steps=100000'], nothing)):  # Training: it would run for minutes.
    process, stdout, stderr = ctrl_c_after(delay, argv)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert 'Traceback' not in stderr, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == line
  assert tree_digest(workdir) == before


def test_predict_classifies_an_image_of_any_size_and_colour(trained, tmp_path):
  _, workdir = trained
  path = str(tmp_path / 'photo.png')
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), np.uint8)).save(path)
  (prediction,) = predict_lib.predict(workdir, [path], defaults())
  top = prediction['top']
  assert len(top) == 3 and top[0]['class'] in datasets.DATASETS['fashion_mnist'].class_names
  assert top[0]['probability'] >= top[1]['probability'] >= top[2]['probability']
  everything = predict_lib.predict(workdir, [path], defaults(), top=10)[0]['top']
  assert sum(p['probability'] for p in everything) == pytest.approx(1.0, abs=1e-5)
  result = run_module('cnnjax.predict', f'--workdir={workdir}', '--json', path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout)[0]['top'][0]['class'] == top[0]['class']


def test_predict_gives_the_probabilities_of_the_runs_evaluation(tmp_path, idx_dir):
  """A run evaluated on test-time views (here the mirror and two shifts) predicts with them
  too, batch by batch, as its evaluation does."""
  from cnnjax.training import augment
  config = shrink(load_config('cnn_simple'), local_data_dir=idx_dir, num_train_steps=-1,
                  num_epochs=1, eval_batch_size=8)  # 20 test images: 3 batches, one padded.
  config.augment.flip_test, config.augment.translate_test = True, 1
  workdir = str(tmp_path / 'run')
  train_and_evaluate(config, workdir)
  test = load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=idx_dir).test
  paths = []
  for i, image in enumerate(test.images):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  predictions = predict_lib.predict(workdir, paths, defaults(), top=10)
  state, model = final_state(config, workdir), experiment(config).model
  def apply(x):
    return model.apply(state.evaluation_variables, x)
  inputs = pipeline.to_inputs(test.images)
  expected = jax.nn.softmax(augment.test_logits(apply, inputs, augment.TestViews(True, 1)))
  plain = jax.nn.softmax(apply(inputs).astype(np.float32))
  assert np.abs(np.asarray(expected) - np.asarray(plain)).max() > 1e-3  # The views matter.
  for prediction, row in zip(predictions, np.asarray(expected)):
    got = {p['index']: p['probability'] for p in prediction['top']}
    np.testing.assert_allclose([got[i] for i in range(10)], row, rtol=1e-5, atol=1e-6)
  evaluated = json.load(open(os.path.join(workdir, report.REPORT_JSON)))
  assert evaluated['accuracy'] == pytest.approx(np.mean(
      [p['top'][0]['index'] == label for p, label in zip(predictions, test.labels)]))


def test_predict_reads_a_folder_a_chunk_at_a_time_and_skips_what_is_no_image(
    trained, tmp_path, monkeypatch):
  """A folder stands for its images at any depth, in name order, with the probabilities each
  gets when named alone; files that are not images are skipped with one warning, hidden ones
  without; decoding a chunk at a time changes no probability."""
  _, workdir = trained
  photos = tmp_path / 'photos'
  (photos / 'shoes' / '2024').mkdir(parents=True)
  rng = np.random.default_rng(0)
  named = []
  for name in ['b.png', 'shoes/a.jpg', 'shoes/2024/c.png', 'a.png']:
    named.append(str(photos / name))
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), np.uint8)).save(named[-1])
  (photos / 'notes.txt').write_text('sizes and prices')
  (photos / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  alone = {path: predict_lib.predict(workdir, [path], defaults(), top=10)[0]['top']
           for path in named}
  result = run_module('cnnjax.predict', f'--workdir={workdir}', '--json', '--top=10',
                      str(photos))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.strip() == (f'cnnjax.predict: warning: Skipped 1 file(s) that are not '
                                   f'readable images: {photos}/notes.txt (not in an image '
                                   'format Pillow reads).')
  printed = json.loads(result.stdout)
  assert [p['image'] for p in printed] == [str(photos / name) for name in [
      'a.png', 'b.png', 'shoes/2024/c.png', 'shoes/a.jpg']]
  for prediction in printed:
    got = {p['index']: p['probability'] for p in prediction['top']}
    want = {p['index']: p['probability'] for p in alone[prediction['image']]}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-6)

  saved_config = os.path.join(workdir, 'config.json')
  config = json.load(open(saved_config))
  config['eval_batch_size'] = 2  # With CHUNK_IMAGES 1: chunks of 2 images.
  json.dump(config, open(saved_config, 'w'))
  monkeypatch.setattr(predict_lib, 'CHUNK_IMAGES', 1)
  chunks = []
  decoded = predict_lib._decoded
  monkeypatch.setattr(predict_lib, '_decoded',
                      lambda files, shape: chunks.append(len(files)) or decoded(files, shape))
  chunked = predict_lib.predict(workdir, [str(photos)], defaults(), top=10)
  assert chunks == [2, 2, 1]  # Four images and the text file, in name order.
  for prediction, whole in zip(chunked, printed, strict=True):
    assert prediction['image'] == whole['image']
    np.testing.assert_allclose([p['probability'] for p in prediction['top']],
                               [p['probability'] for p in whole['top']], rtol=1e-5, atol=1e-6)

  for folder, contents, line in [
      ('empty', {}, 'is a folder with no files in it; pass image files, or a folder that '
       'holds them.'),
      ('texts', {'a.txt': 'x', 'b.csv': '1,2'}, None)]:
    (tmp_path / folder).mkdir()
    for name, text in contents.items():
      (tmp_path / folder / name).write_text(text)
    result = run_module('cnnjax.predict', f'--workdir={workdir}', str(tmp_path / folder))
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f'cnnjax.predict: error: {tmp_path / folder} {line}' if line else
                    f'cnnjax.predict: error: No readable images in {tmp_path / folder}: 2 '
                    'file(s), none an image Pillow reads.')


def test_predict_prints_each_image_on_one_line_whatever_its_name():
  """A name with a newline had taken two lines, which a reader of the text splits wrongly."""
  top = [{'class': 'cat', 'index': 0, 'probability': 0.75}]
  names = ['shots/a\nb.png', 'shots/caf\udce9.png', 'shots/\u732b\ttab.png']
  assert predict_lib.format_predictions([{'image': n, 'top': top} for n in names]) == (
      'shots/a\\nb.png\n  cat: 0.7500\nshots/caf\\xe9.png\n  cat: 0.7500\n'
      'shots/\u732b\\ttab.png\n  cat: 0.7500')


def test_predict_expands_patterns_a_shell_left_alone(tmp_path):
  """Windows' shell, and quotes, pass `photos/*.jpg` on as it is: it stands for the files it
  matches, in name order, as a folder's files (what is not an image is skipped later); a file
  whose own name looks like a pattern is still that file."""
  from cnnjax.data import images
  (tmp_path / 'photos' / 'old').mkdir(parents=True)
  for name in ['b.jpg', 'a.jpg', 'old/c.jpg', 'Thumbs.db', 'shot[1].png']:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'photos' / name, 'PNG')
  photos = str(tmp_path / 'photos')
  assert predict_lib.image_files([f'{photos}/*.jpg']) == [
      (f'{photos}/a.jpg', False), (f'{photos}/b.jpg', False)]
  assert predict_lib.image_files([f'{photos}/**/*.jpg', f'{photos}/shot[1].png']) == [
      (f'{photos}/a.jpg', False), (f'{photos}/b.jpg', False), (f'{photos}/old/c.jpg', False),
      (f'{photos}/shot[1].png', True)]
  assert predict_lib.image_files([f'{photos}/*.db']) == [(f'{photos}/Thumbs.db', False)]
  with pytest.raises(images.ImageInputError, match=r'photos/\*\.gif matches no file\.$'):
    predict_lib.image_files([f'{photos}/*.gif'])
  # An address copied from a browser 'did not exist'.
  with pytest.raises(images.ImageInputError, match=r'^https://example.com/shirt.png is a web '
                     r'address; cnnjax.predict reads files: download the image first'):
    predict_lib.image_files(['https://example.com/shirt.png'])


def test_predict_rejects_a_non_image_and_a_run_without_checkpoint(trained, tmp_path):
  _, workdir = trained
  text = tmp_path / 'notes.png'
  text.write_text('not a picture')
  result = run_module('cnnjax.predict', f'--workdir={workdir}', str(text))
  assert result.returncode == 2
  assert (f'cnnjax.predict: error: {text} is not an image that can be read (not in an image '
          'format Pillow reads).') in result.stderr
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  (empty / 'config.json').write_text(open(os.path.join(workdir, 'config.json')).read())
  image = tmp_path / 'ok.png'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  result = run_module('cnnjax.predict', f'--workdir={empty}', str(image))
  assert result.returncode == 2 and 'holds no checkpoint' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_reproduce_quick_writes_a_row_per_config(tmp_path, mock_tfds_64, monkeypatch):
  from cnnjax.pretrained import files
  from experiments import reproduce
  from tests.helpers import shared_weights_file
  source = shared_weights_file('vgg16')  # Served as if from Keras' URL: no network.
  monkeypatch.setattr(files, 'imagenet_weights_file', lambda backbone, size: files.WeightsFile(
      f'{backbone}.h5', f'file://{source}', None))
  path = reproduce.main(['--suite=fashion_mnist', '--quick', f'--workdir_root={tmp_path}/runs',
                         f'--results_dir={tmp_path}/results'])
  table = open(path).read()
  rows = [line for line in table.splitlines() if line.startswith('| `')]
  assert [row.split('`')[1] for row in rows] == list(reproduce.SUITES['fashion_mnist'])
  assert 'Quick smoke check' in table and '0.9287 (test accuracy)' in table
  assert os.path.exists(tmp_path / 'results' / 'fashion_mnist_quick_curves.png')
  assert os.path.exists(tmp_path / 'results' / 'fashion_mnist_quick' /
                        'cnn_deep_confusion_matrix.png')


@pytest.mark.slow
def test_colab_notebook_runs_headless_on_cpu(tmp_path):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  data = tmp_path / 'data'
  data.mkdir()
  make_idx_dataset(str(data))
  os.environ.update({  # The kernel inherits them; restored below.
      'CNNJAX_REPO_DIR': REPO_ROOT, 'CNNJAX_NOTEBOOK_RUNS_DIR': str(tmp_path / 'runs'),
      'CNNJAX_NOTEBOOK_CONFIG': 'cnn_simple', 'CNNJAX_NOTEBOOK_EXTRA': json.dumps([
          f'--config.local_data_dir={data}', '--config.batch_size=8',
          '--config.eval_batch_size=10', '--config.num_train_steps=4'])})
  try:
    notebook = nbformat.read(os.path.join(REPO_ROOT, 'experiments', 'colab.ipynb'), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}).execute()
  finally:
    for key in ('CNNJAX_REPO_DIR', 'CNNJAX_NOTEBOOK_RUNS_DIR', 'CNNJAX_NOTEBOOK_CONFIG',
                'CNNJAX_NOTEBOOK_EXTRA'):
      os.environ.pop(key, None)
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # Curves and confusion matrix, inline.
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'Epoch 1/1' in text and 'precision' in text
