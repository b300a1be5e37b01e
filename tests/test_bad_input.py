"""What users really feed cnnjax: each bad input ends in one line, exit status 2, and leaves
the workdir as it was (or never made)."""
import importlib.util
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnjax import sharding
from cnnjax.data import datasets
from tests.helpers import (REPO_ROOT, load_dataset, make_idx_dataset, run_tool,
                           shared_weights_file, tiny_image_tree, tree_digest, write_idx)

CNN_SIMPLE = f'--config={REPO_ROOT}/configs/cnn_simple.py'


def assert_one_line_error(result, tool, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith(f'{tool}: error:')]
  assert len(errors) == 1, result.stderr[-2000:]  # Printed once.
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def image_tree_archive(directory, per_class=3):
  """A CIFAR-10-shaped .tar.gz of PNGs: train/<class>/*.png and test/<class>/*.png."""
  rng = np.random.default_rng(0)
  tree = directory / 'tree'
  for split in ('train', 'test'):
    for name in datasets.DATASETS['cifar10'].class_names:
      os.makedirs(tree / split / name)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
            tree / split / name / f'{i}.png')
  archive = directory / 'cifar.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tree / 'train', arcname='train')
    tar.add(tree / 'test', arcname='test')
  return archive


@pytest.fixture
def data(tmp_path):
  directory = tmp_path / 'data'
  directory.mkdir()
  make_idx_dataset(str(directory))  # 40 train, 20 test.
  return directory


def bad_labels(data, tmp_path):
  labels = np.zeros(20, np.uint8)
  labels[7] = 12
  write_idx(str(data / 't10k-labels-idx1-ubyte.gz'), labels)
  return [f'--config.local_data_dir={data}']


def truncated_archive(data, tmp_path):
  archive = image_tree_archive(tmp_path)
  payload = archive.read_bytes()
  cut = tmp_path / 'cut.tar.gz'
  cut.write_bytes(payload[:len(payload) // 2])
  return [f'--config={REPO_ROOT}/configs/cifar_cnn.py', f'--config.local_data_dir={cut}',
          '--config.batch_size=8']


def with_data(*extra):
  return lambda data, tmp_path: [f'--config.local_data_dir={data}', *extra]


def config_with_data(name, *extra):
  return lambda data, tmp_path: [f'--config={REPO_ROOT}/configs/{name}.py',
                                 f'--config.local_data_dir={data}', *extra]


def config_file(text, overridden=True):
  def make(data, tmp_path):
    path = tmp_path / 'my_config.py'
    path.write_text(text)
    return [f'--config={path}'] + ([f'--config.local_data_dir={data}'] if overridden else [])
  return make


MAIN_CASES = {
    'truncated archive': (truncated_archive, 'is truncated or corrupt'),
    # Refused after the start summary, which had announced '(0 trainable)'.
    'config.trainable matching nothing': (with_data("--config.trainable=^nothing$"),
                                          "config.trainable='^nothing$' matches no parameter "
                                          'of the model; nothing would train.'),
    # Each folder had been 'not a class of this dataset: rename it to one of them'.
    "CIFAR-10's images given to a Fashion-MNIST config": (
        lambda data, tmp_path: [f'--config.local_data_dir={image_tree_archive(tmp_path)}'],
        'None of the class folders of train/ in ', 'cifar.tar.gz (airplane, automobile, bird '
        "and 7 more) is a class of fashion_mnist (T-shirt/top, Trouser, Pullover, Dress, Coat, "
        "Sandal, Shirt, Sneaker, Bag, Ankle boot): these are another dataset's images; pass "
        '--config.dataset=cifar10, or use a config made for it.'),
    "images of the user's own classes given to a CIFAR-10 config": (
        lambda data, tmp_path: [f'--config={REPO_ROOT}/configs/cifar_cnn.py',
                                f'--config.local_data_dir={tiny_image_tree(2)}'],
        'None of the class folders of train/ in ', '(ant, bee, wasp) is a class of cifar10',
        'for images of your own classes use configs/image_folder.py '
        "(--config.dataset=image_folder), whose classes are the folders' names."),
    "Fashion-MNIST's files given to a CIFAR-10 config": (
        config_with_data('cifar_cnn'), "have shape (28, 28, 1), as fashion_mnist's and mnist's "
        "do; cifar10's have (32, 32, 3). For fashion_mnist's files pass "
        '--config.dataset=fashion_mnist (or mnist); to train on these resized to '
        "cifar10's, pass --config.image_size=32 --config.channels=3."),
    'label outside the classes': (bad_labels, "are not classes 0..9 (e.g. [12])"),
    'a web address as the data folder': (
        lambda data, tmp_path: ['--config.local_data_dir=https://example.com/fashion.zip'],
        "config.local_data_dir='https://example.com/fashion.zip' is a web address; it takes "
        'files: download the archive first'),
    'split beyond 100%': (with_data('--config.train_split=train[:200%]'), 'beyond 100%'),
    'split reversed': (with_data('--config.train_split=train[5:2]'), 'selects no example'),
    'split empty': (with_data('--config.train_split=train[:0]'), 'selects no example'),
    'empty validation split': (with_data('--config.val_split=train[40:]'),
                               "'train[40:]' of local:"),
    'absolute split too far': (with_data('--config.test_split=test[:500]'), 'beyond the 20'),
    'batch larger than the split': (with_data('--config.batch_size=64'),
                                    'config.batch_size=64 is larger than the 40'),
    'unknown field on the command line': (with_data('--config.batchsize=3'),
                                          "config field 'batchsize' does not exist"),
    'model option the config file does not set': (
        config_with_data('cnn_deep', '--config.model_kwargs.batch_norm=True'),
        'config.model_kwargs.batch_norm is not set by this config file'),
    'misspelt model option': (
        config_with_data('cnn_deep', '--config.model_kwargs.batchnorm=True'),
        "config.model_kwargs.batchnorm is not an option of model 'cnn_deep' (did you mean "
        'batch_norm?); its options are batch_norm, block_dropout'),
    "another model's option": (
        with_data('--config.model_kwargs.batch_norm=True'),
        "config.model_kwargs.batch_norm is not an option of model 'cnn_simple'; its options "
        'are dtype, num_classes.'),
    "an option of the model a flag names": (
        with_data('--config.model=mlp', '--config.model_kwargs.hiden_sizes=[8]'),
        "config.model_kwargs.hiden_sizes is not an option of model 'mlp' (did you mean "
        'hidden_sizes?)'),
    'unknown model option value (cnn_fast)': (
        config_with_data('cifar10_best', '--config.dataset=fashion_mnist',
                         '--config.model_kwargs.activation=relu6'),
        "Unknown activation 'relu6' (config.model_kwargs.activation)"),
    'unknown model option value (VGG16)': (
        config_with_data('vgg_scratch_he', '--config.model_kwargs.kernel_init=he_uniform'),
        "Unknown kernel_init 'he_uniform'"),
    'flag value of the wrong type': (with_data('--config.batch_size=abc'), 'batch_size'),
    'a value for a group of fields': (with_data('--config.model_kwargs=x'),
                                      'config.model_kwargs is a group of fields, not a value: '
                                      'set one of them (--config.model_kwargs.<field>=value).'),
    'learning-rate boundaries that are not numbers': (
        with_data('--config.lr_boundaries=abc'),
        "config.lr_boundaries are fractions of a stage's steps, each in (0, 1), increasing "
        "(e.g. 0.5,0.75); got ('abc',)."),
    'dataset name spelt otherwise': (with_data('--config.dataset=FashionMNIST'),
                                     "Unknown dataset 'FashionMNIST' (config.dataset); did "
                                     "you mean 'fashion_mnist'?"),
    'dataset name with a hyphen': (with_data('--config.dataset=fashion-mnist'),
                                   "Unknown dataset 'fashion-mnist' (config.dataset); did you "
                                   "mean 'fashion_mnist'?"),
    'test-time shift as large as the image': (
        with_data('--config.augment.translate_test=28'),
        'config.augment.translate_test=28 shifts 28x28 images by their whole size'),
    # Trained on: some crops lay wholly in the zero padding, blank images with a label.
    'crop padding larger than the image': (
        with_data('--config.augment.crop_padding=100'),
        'config.augment.crop_padding=100 shifts 28x28 images by their whole size'),
    'images too small for the model': (
        with_data('--config.image_size=3'),
        "Model 'cnn_simple' needs images of at least 4x4 pixels; these are 3x3",
        '--config.image_size=4 or more'),
    # The model resizes its input itself: no input size cured it (ZeroDivisionError in Flax).
    'a model resize that its layers shrink to nothing': (
        config_with_data('vgg_scratch', '--config.model_kwargs.image_size=16'),
        "Model 'vgg16_classifier' resizes its images to 16x16 (config.model_kwargs.image_size), "
        'which its layers shrink to nothing: it needs at least 32x32',
        '--config.model_kwargs.image_size=32 or more'),
    'a negative dropout rate (trained on without a word)': (
        config_with_data('vgg_scratch', '--config.model_kwargs.dropout=-0.5'),
        'config.model_kwargs.dropout must be a rate in [0, 1), got -0.5.'),
    'negative seed': (with_data('--config.seed=-1'), 'config.seed must be an integer from 0'),
    'empty name (an unset $NAME)': (with_data('--config.name='),
                                    "config.name='' must be a folder name (the default workdir "
                                    'is checkpoints/<name>)'),
    'a name that is a path': (with_data('--config.name=../../etc'),
                              "config.name='../../etc' must be a folder name",
                              'pass --workdir=PATH'),
    'seed beyond 32 bits': (with_data('--config.seed=4294967296'),
                            'config.seed must be an integer from 0 to 2**32 - 1'),
    'negative test-time shift': (with_data('--config.augment.translate_test=-1'),
                                 'config.augment.translate_test must be 0 (off) or a positive'),
    'num_train_steps zero': (with_data('--config.num_train_steps=0'),
                             'config.num_train_steps must be -1'),
    'config file missing': (lambda data, tmp_path: [f'--config={tmp_path}/nope.py'],
                            'cannot load the config file'),
    'config file that does not parse': (config_file('def get_config(:\n'), 'does not parse'),
    'config file that raises': (config_file('def get_config():\n  return 1 / 0\n'),
                                'ZeroDivisionError'),
    'config file without get_config': (config_file('config = None\n'),
                                        'the config file defines no get_config()'),
    'config file returning None': (config_file('def get_config():\n  pass\n'),
                                   "get_config() returned None (a missing 'return config'?)"),
    'config file returning a dict': (config_file('def get_config():\n  return {"seed": 1}\n'),
                                     'get_config() returned a dict or other mapping, not an '
                                     'ml_collections.ConfigDict'),
    'config file returning a dict, no overrides': (
        config_file('def get_config():\n  return {"seed": 1}\n', overridden=False),
        'get_config() returned dict, not an ml_collections.ConfigDict'),
    'a field of a number': (with_data('--config.seed.x=1'),
                            '--config.seed.x: config.seed is a value (int), not a group'),
    'multi-process flags without --multihost': (
        with_data('--num_processes=2', '--process_id=0'),
        '--num_processes --process_id are for a multi-process run, which only --multihost '
        'starts'),
    'a process id past the processes': (
        with_data('--multihost', '--coordinator_address=127.0.0.1:1', '--num_processes=2',
                  '--process_id=2'), '--process_id=2: give 0 to 1. Outside TPU pods'),
    'a coordinator address without a port': (
        with_data('--multihost', '--coordinator_address=localhost', '--num_processes=2',
                  '--process_id=0'), '--coordinator_address=localhost is not HOST:PORT'),
    '--multihost alone, outside a cluster': (
        with_data('--multihost'), '--multihost could not join a multi-process run: '),
    'a field of a string': (with_data('--config.optimizer.lr=1'),
                            '--config.optimizer.lr: config.optimizer is a value (str), '
                            'not a group'),
    "a tuple's item": (with_data('--config.lr_boundaries.0=0.3'),
                       '--config.lr_boundaries.0 names no config field',
                       "a tuple is set whole (--config.lr_boundaries='(0.5, 0.8)')"),
    'config file given arguments it does not take': (
        lambda data, tmp_path: [f'--config={REPO_ROOT}/configs/cnn_simple.py:batch_size=3'],
        'the config file failed: TypeError: get_config() takes 0 positional arguments but 1 '
        "was given (the text after ':' in --config=FILE:ARGS is passed to get_config"),
}


@pytest.mark.parametrize('case', sorted(MAIN_CASES))
def test_bad_input_to_main_is_one_line_and_makes_no_workdir(case, data, tmp_path):
  make_args, *messages = MAIN_CASES[case]
  args = make_args(data, tmp_path)
  if not any(a.startswith('--config=') for a in args):
    args = [CNN_SIMPLE, *args]
  # In a folder yet to be made: a run refused leaves neither it nor its lock file behind.
  result = run_tool('cnnjax.main', [*args, f'--workdir={tmp_path}/runs/run'], tmp_path)
  assert_one_line_error(result, 'cnnjax', *messages)
  assert 'parameters (' not in result.stdout  # Refused before the run announced itself.
  assert not os.path.exists(tmp_path / 'runs')


COMMAND_LINE_CASES = {
    # Overrides before the file they override: applied all the same (batch 64 > 40 examples).
    'overrides before --config': (lambda data, tmp_path: [
        f'--config.local_data_dir={data}', '--config.batch_size=64', CNN_SIMPLE],
        'config.batch_size=64 is larger than the 40'),
    'no --config': (lambda data, tmp_path: ['--config.batch_size=3'],
                    'no config file given: pass --config=FILE'),
    'a config file without --config': (
        lambda data, tmp_path: ['configs/vgg_scratch.py', '--config.batch_size=3'],
        'no config file given: pass --config=FILE (e.g. --config=configs/vgg_scratch.py); '
        'configs/vgg_scratch.py alone is an argument, not the config.'),
    # absl defined each override flag twice and said only that, naming neither file.
    'two config files': (lambda data, tmp_path: [
        CNN_SIMPLE, '--config.batch_size=3', '--config', f'{REPO_ROOT}/configs/cnn_deep.py'],
        f'--config is given 2 times ({REPO_ROOT}/configs/cnn_simple.py, '
        f'{REPO_ROOT}/configs/cnn_deep.py): give one config file'),
    # A value forgotten: absl took the next flag as the value, and never applied that flag.
    'a config field without its value': (lambda data, tmp_path: [
        CNN_SIMPLE, '--config.local_data_dir', '--config.batch_size=3'],
        '--config.local_data_dir was given no value and took the next flag, '
        '--config.batch_size=3, as its value'),
    '--config without its value': (lambda data, tmp_path: ['--config', '--config.batch_size=3'],
                                   '--config was given no value and took the next flag'),
    '--config without its value, after a config file': (
        lambda data, tmp_path: [CNN_SIMPLE, '--config', '--config.batch_size=3'],
        '--config was given no value and took the next flag, --config.batch_size=3,'),
    'mistyped --config': (lambda data, tmp_path: [f'--confg={REPO_ROOT}/configs/cnn_simple.py'],
                          'unrecognized flag --confg; did you mean --config?'),
    'a misspelt config file': (lambda data, tmp_path: ['--config=configs/cnn_simpel.py'],
                               "No such file or directory: 'configs/cnn_simpel.py'; did you "
                               f'mean --config={REPO_ROOT}/configs/cnn_simple.py?'),
    'a config module name': (
        lambda data, tmp_path: [f'--config={REPO_ROOT}/configs.vgg_scratch_bn'],
        f'did you mean --config={REPO_ROOT}/configs/vgg_scratch_bn.py?'),
    'a directory as --config': (lambda data, tmp_path: [f'--config={tmp_path}'],
                                "'; --config takes a config file, e.g. "
                                '--config=configs/cnn_simple.py'),
    'the configs directory as --config': (
        lambda data, tmp_path: [f'--config={REPO_ROOT}/configs'],
        f'.py files in it, e.g. --config={REPO_ROOT}/configs/cnn_simple.py'),
    # JSON run as Python: 'the config file failed: NameError: name 'false' is not defined'.
    "a run's saved config.json as --config": (
        lambda data, tmp_path: [f'--config={saved_run_config(tmp_path)}'],
        '--config=old_run/config.json is the config a run saved, not a config file: '
        '--config takes a Python file whose get_config() returns the config, as '
        'configs/cnn_simple.py does. To continue or finish that run, give the file it was '
        f'started with and its workdir (--config={REPO_ROOT}/configs/cnn_simple.py '
        '--workdir=old_run); python -m cnnjax.evaluate --workdir=old_run evaluates it'),
    'a YAML file as --config': (
        lambda data, tmp_path: [f'--config={config_file_of(tmp_path, "run.yaml")}'],
        '--config=run.yaml is not a config file: --config takes a Python file whose '
        'get_config() returns the config'),
    'a stray argument': (lambda data, tmp_path: [CNN_SIMPLE, 'batch_size=3'],
                         'unexpected argument(s) batch_size=3: every option is a flag'),
}


def test_config_hints_look_in_a_folder_named_with_glob_characters(tmp_path):
  """'[' in a folder's name made a glob pattern of it: neither hint found the files there."""
  from cnnjax import cli
  folder = tmp_path / 'configs [2026]'
  folder.mkdir()
  (folder / 'mine.py').write_text('')
  assert cli.config_file_hint(str(folder)).endswith(f', e.g. --config={folder}/mine.py')
  assert cli.config_file_hint(f'{folder}/mien.py') == f'; did you mean --config={folder}/mine.py?'


def config_file_of(tmp_path, name: str) -> str:
  """A config in another format than Python (`name`, in the tool's folder, `tmp_path`)."""
  (tmp_path / name).write_text('batch_size: 64\noptimizer: adam\n')
  return name


def saved_run_config(tmp_path) -> str:
  """The config.json of a run's workdir, as cnnjax.main saves it (in part)."""
  (tmp_path / 'old_run' / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'old_run' / 'config.json').write_text(
      json.dumps({'name': 'cnn_simple', 'resume': True, 'stop_on_collapse': False}))
  return 'old_run/config.json'  # As given from the folder the tool runs in, `tmp_path`.


@pytest.mark.parametrize('case', sorted(COMMAND_LINE_CASES))
def test_a_command_line_in_any_order_or_malformed(case, data, tmp_path):
  make_args, message = COMMAND_LINE_CASES[case]
  result = run_tool('cnnjax.main', [*make_args(data, tmp_path), f'--workdir={tmp_path}/run'],
                    tmp_path)
  assert_one_line_error(result, 'cnnjax', message)
  assert not os.path.exists(tmp_path / 'run')


def test_a_workdir_flag_without_its_value_is_refused(data, tmp_path):
  """It trained in a folder named '--config.batch_size=3', at the config's batch size."""
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}', '--workdir',
                                    '--config.batch_size=3'], tmp_path)
  assert_one_line_error(result, 'cnnjax', '--workdir was given no value and took the next '
                        'flag, --config.batch_size=3, as its value: write --workdir=VALUE')
  assert sorted(os.listdir(tmp_path)) == ['data']  # The dataset's folder alone.


def trained_run(data, tmp_path, *extra):
  """A finished 1-epoch cnn_simple run on the IDX files; its workdir."""
  workdir = tmp_path / 'run'
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    '--config.batch_size=8', '--config.num_epochs=1',
                                    f'--workdir={workdir}', *extra], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def corrupt_config_json(workdir, data):
  (workdir / 'config.json').write_text('{"name": "cnn_simple", ')
  return [f'--config.local_data_dir={data}']


def cut_results_json(workdir, data):
  text = (workdir / 'results.json').read_text()
  (workdir / 'results.json').write_text(text[:len(text) // 2])
  return [f'--config.local_data_dir={data}']


def edited_results_json(**edit):
  """A results.json edited by hand: each had been a traceback (KeyError, a format code)."""
  def make(workdir, data):
    results = json.loads((workdir / 'results.json').read_text())
    results.update(edit)
    (workdir / 'results.json').write_text(json.dumps(
        {k: v for k, v in results.items() if v is not None}))
    return [f'--config.local_data_dir={data}']
  return make


def finished_without_checkpoints(workdir, data):
  for step in os.listdir(workdir / 'checkpoints'):
    os.rename(workdir / 'checkpoints' / step, workdir.parent / f'moved-{step}')
  return [f'--config.local_data_dir={data}']


def other_data(workdir, data):
  other = workdir.parent / 'other'
  other.mkdir()
  make_idx_dataset(str(other), seed=1)
  (workdir / 'results.json').unlink()  # As if the run had stopped: it would resume.
  return [f'--config.local_data_dir={other}', '--config.num_epochs=2']


WORKDIR_CASES = {
    'corrupt config.json': (corrupt_config_json, 'config.json is unreadable'),
    'cut results.json': (cut_results_json, 'results.json is unreadable (JSONDecodeError',
                         'move it aside and run the same command to evaluate the run again'),
    'results.json without its loss': (edited_results_json(test_loss=None),
                                      "results.json is unreadable (ValueError: it has no "
                                      "'test_loss'). It marks the run finished"),
    'results.json with a loss in words': (edited_results_json(test_loss='low'),
                                          "results.json is unreadable (ValueError: its "
                                          "'test_loss' is 'low', not int or float)"),
    'finished run without checkpoints': (finished_without_checkpoints,
                                         'holds the results of a finished run but no readable'),
    'resumed on other examples': (other_data, 'trained on other examples'),
}


@pytest.mark.parametrize('case', sorted(WORKDIR_CASES))
def test_bad_resume_is_one_line_and_changes_nothing(case, data, tmp_path):
  workdir = trained_run(data, tmp_path)
  make_args, *messages = WORKDIR_CASES[case]
  args = make_args(workdir, data)
  before = tree_digest(workdir)
  result = run_tool('cnnjax.main', [CNN_SIMPLE, '--config.batch_size=8', '--config.num_epochs=1',
                                    *args, f'--workdir={workdir}'], tmp_path)
  assert_one_line_error(result, 'cnnjax', *messages)
  assert tree_digest(workdir) == before


def test_a_workdir_that_is_a_file(data, tmp_path):
  (tmp_path / 'run').write_text('my notes')
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    f'--workdir={tmp_path}/run'], tmp_path)
  assert_one_line_error(result, 'cnnjax', 'is a file, not a directory')
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    f'--workdir={tmp_path}/run/inside'], tmp_path)
  assert_one_line_error(result, 'cnnjax', f'{tmp_path}/run is not a writable directory')
  assert (tmp_path / 'run').read_text() == 'my notes'


@pytest.mark.parametrize('root', ['/', '//', '/..'])
def test_the_root_of_the_file_system_is_no_workdir(root):
  """`--workdir=/$RUN` with RUN unset: as root (Colab's user) the run wrote into '/'."""
  from cnnjax.runs import workdir as workdir_lib
  with pytest.raises(workdir_lib.WorkdirError, match=f'^--workdir={re.escape(root)} is the root '
                     'of the file system: name a folder for the run'):
    workdir_lib.check_writable(root)


@pytest.mark.parametrize('inner', ['mlp_128_64', 'fashion_mnist/mlp_128_64'])
def test_a_folder_of_runs_is_no_workdir(inner, tmp_path):
  """--workdir=checkpoints (or a suite's folder of reproduce.py): the run was written around
  the runs there, which were then refused as lying inside it, by main and evaluate alike."""
  from cnnjax.runs import workdir as workdir_lib
  run = tmp_path / 'checkpoints' / inner
  run.mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps({'model': 'mlp', 'dataset': 'fashion_mnist',
                                               'batch_size': 64}))
  with pytest.raises(workdir_lib.WorkdirError, match=(
      f'^--workdir={tmp_path}/checkpoints holds runs \\({re.escape(inner)}\\): a run there '
      'would lie around them, and they inside it, past resuming or evaluating. Give the run a '
      f'folder of its own, e.g. --workdir={tmp_path}/checkpoints/cnn_simple.$')):
    workdir_lib.check_writable(str(tmp_path / 'checkpoints'), 'cnn_simple')
  workdir_lib.check_writable(str(run))  # The run itself, resumed.
  (tmp_path / 'checkpoints' / 'metrics.jsonl').write_text('')  # A run there already: resumed.
  workdir_lib.check_writable(str(tmp_path / 'checkpoints'), 'cnn_simple')


@pytest.mark.parametrize('below', ['', '/inside'])
def test_a_workdir_through_a_link_to_nowhere(below, data, tmp_path):
  """A link to a drive that is not mounted: mkdir cannot make its target (FileExistsError)."""
  (tmp_path / 'runs').symlink_to(tmp_path / 'drive' / 'runs')
  before = sorted(os.listdir(tmp_path))
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    f'--workdir={tmp_path}/runs{below}'], tmp_path)
  assert_one_line_error(result, 'cnnjax', f'{tmp_path}/runs is a link to {tmp_path}/drive/runs, '
                        'which does not exist', 'or choose another --workdir')
  assert sorted(os.listdir(tmp_path)) == before  # No lock file, no drive/ made.


def test_a_workdir_named_in_bytes_that_are_not_utf8_is_refused_before_writing(data, tmp_path):
  """A folder from a Latin-1 system: orbax's tensorstore took the path at the first save and
  ended the run in a pybind11 cast error, its records half written."""
  before = sorted(os.listdir(tmp_path))
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    f'--workdir={tmp_path}/caf\udce9/run'], tmp_path)
  assert_one_line_error(result, 'cnnjax', f'--workdir={tmp_path}/caf\\xe9/run has bytes in its '
                        'path that are not UTF-8 text', 'rename the folder in UTF-8')
  assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(importlib.util.find_spec('jax_cuda12_plugin') is not None
                    or importlib.util.find_spec('jax_cuda13_plugin') is not None,
                    reason='this jax can start CUDA devices')
def test_devices_jax_cannot_start_are_one_line(data, tmp_path):
  """A command copied from a GPU machine (JAX_PLATFORMS=cuda), where jax has no CUDA: jax's
  own bare AssertionError, and its RuntimeError for a backend it does not know."""
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    f'--workdir={tmp_path}/run'], tmp_path,
                    {'JAX_PLATFORMS': 'cuda'})
  assert_one_line_error(result, 'cnnjax', 'JAX_PLATFORMS=cuda asks for: no jax for them',
                        'pip install -U "jax[cuda12]"', 'or unset JAX_PLATFORMS')
  assert not os.path.exists(tmp_path / 'run')
  result = run_tool('cnnjax.predict', [f'--workdir={tmp_path}/run', 'shirt.png'], tmp_path,
                    {'JAX_PLATFORMS': 'nosuch'})
  assert_one_line_error(result, 'cnnjax.predict', "Unable to initialize backend 'nosuch'")


def tool_parser(**kwargs):
  from cnnjax import cli
  parser = cli.ArgumentParser(prog='tool', **kwargs)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='test')
  parser.add_argument('images', nargs='*')
  return parser


@pytest.mark.parametrize('argv, message', [
    (['--work_dir=run'], 'unrecognized flag --work_dir; did you mean --workdir?'),  # Not 'required'.
    (['--workdir=run', '--splt', 'train'], 'unrecognized flag --splt; did you mean --split?'),
    (['--workdir=run', '--config.seed=1'], 'unrecognized flag --config.seed; the flags are '
     '--help, --split, --workdir.'),
])
def test_a_misspelt_tool_flag_is_named_with_the_one_meant(argv, message, capsys):
  with pytest.raises(SystemExit) as exited:
    tool_parser().parse_args(argv)
  assert exited.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == f'tool: error: {message}'


def test_tool_flags_a_parser_takes_as_argparse_does():
  args = tool_parser().parse_args(['--work=run', '--spl=train', 'a.png', '--', '--b.png'])
  assert (args.workdir, args.split, args.images) == ('run', 'train', ['a.png', '--b.png'])
  args, rest = tool_parser(passthrough=('--config.',)).parse_known_args(
      ['--workdir=run', '--config.seed=1'])
  assert args.workdir == 'run' and rest == ['--config.seed=1']
  from cnnjax import cli
  parser = cli.ArgumentParser(prog='tool')
  commands = parser.add_subparsers(dest='command')
  commands.add_parser('download').add_argument('--image_size', type=int)
  assert parser.parse_args(['download', '--image_size=3']).image_size == 3


@pytest.mark.parametrize('xla_flags, message', [
    ('xla_force_host_platform_device_count=2', 'does not start with "--", so XLA would read it'),
    ('-xla_force_host_platform_device_count=2', 'start with exactly "--"'),
    ('--xla_force_host_platform_device_count', 'must be a whole number of at least 1'),
    ('--xla_force_host_platform_device_count=0', 'must be a whole number of at least 1'),
    ('--xla_force_host_platform_device_count=8,--xla_cpu_enable_fast_math=false',
     'flags are separated by spaces'),
    ('--xla_cpu_enable_fast_math=false --xla_force_host_platform_devce_count=8',
     'which XLA does not know: did you mean --xla_force_host_platform_device_count=8?'),
])
def test_xla_flags_mistakes_are_refused(xla_flags, message):
  """Each of these ended the process in XLA's fatal log line or its page of every flag."""
  with pytest.raises(sharding.BackendError, match=re.escape(message)):
    sharding.check_xla_flags(xla_flags)


def test_xla_flags_a_user_may_give_pass():
  for xla_flags in ('', '  ', '--xla_force_host_platform_device_count=8',
                    '--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2',
                    '--xla_dump_to=/tmp/dump'):
    sharding.check_xla_flags(xla_flags)


def test_xla_flags_mistake_is_one_line_before_jax_starts(data, tmp_path):
  """For the tools and the benchmarks alike (a benchmark's workers start jax themselves)."""
  for module, tool, args in [
      ('cnnjax.main', 'cnnjax', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                 f'--workdir={tmp_path}/run']),
      ('experiments.benchmark', 'benchmark.py', [CNN_SIMPLE, f'--local_data_dir={data}',
                                                 '--no-keras', '--epochs=1']),
      ('experiments.device_benchmark', 'device_benchmark.py', [
          f'--fashion_mnist={data}', '--configs=cnn_simple', '--flops_only'])]:
    result = run_tool(module, args, tmp_path,
                      {'XLA_FLAGS': '--xla_force_host_platform_device_count=two'})
    assert_one_line_error(result, tool, 'XLA_FLAGS holds '
                          '--xla_force_host_platform_device_count=two: the device count must be')
  assert not os.path.exists(tmp_path / 'run')


def test_another_users_run_is_named_as_such_by_its_readers(data, tmp_path, monkeypatch):
  """A run this user may not read had 'no config.json', or its checkpoints/ folder a
  PermissionError traceback; one it may not write was evaluated, then refused its reports.
  (Tests may run as root, whom no permission stops: the system's answers are played.)"""
  import errno
  from cnnjax import evaluate, predict
  from cnnjax.runs import saved
  from tests.helpers import defaults
  workdir = trained_run(data, tmp_path)
  image = tmp_path / 'shirt.png'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  before = tree_digest(workdir)
  access = os.access
  with monkeypatch.context() as patch:
    patch.setattr(os, 'access', lambda path, mode: path != str(workdir) and access(path, mode))
    for read in (lambda: evaluate.evaluate(str(workdir), defaults()),
                 lambda: predict.predict(str(workdir), [str(image)], defaults())):
      with pytest.raises(saved.RunNotFoundError, match=(
          f'^{workdir} cannot be read by this user \\(permission denied\\): make it '
          f'readable \\(chmod -R a\\+rX {workdir}\\), or work on a copy of the run.$')):
        read()
  listdir = os.listdir
  def refusing(path):
    if os.fspath(path) == str(workdir / 'checkpoints'):
      raise PermissionError(errno.EACCES, 'Permission denied', path)
    return listdir(path)
  with monkeypatch.context() as patch:
    patch.setattr(os, 'listdir', refusing)
    with pytest.raises(PermissionError, match=f'^{workdir}/checkpoints cannot be read by this '
                       f'user \\(permission denied\\): make it readable \\(chmod -R a\\+rX '
                       f'{workdir}\\), or work on a copy of the run.$'):
      predict.predict(str(workdir), [str(image)], defaults())
  with monkeypatch.context() as patch:  # Readable, not writable: refused before evaluating.
    patch.setattr(os, 'access', lambda path, mode: not (path == str(workdir) and mode & os.W_OK))
    from cnnjax.training import setup
    patch.setattr(setup.Experiment, 'trainer', lambda *args, **kw: pytest.fail('evaluated first'))
    with pytest.raises(ValueError, match=f'^{workdir}, where the reports go, cannot be written '
                       f'\\({workdir} is not a writable directory\\); make the run writable to '
                       'this user, or evaluate a copy of it.$'):
      evaluate.evaluate(str(workdir), defaults())
  assert tree_digest(workdir) == before


def test_evaluate_and_predict_bad_input(data, tmp_path):
  workdir = trained_run(data, tmp_path)
  before = tree_digest(workdir)
  result = run_tool('cnnjax.evaluate', [f'--workdir={workdir}', '--split=test[:0]'], tmp_path)
  assert_one_line_error(result, 'cnnjax.evaluate', 'selects no example')
  result = run_tool('cnnjax.evaluate', [f'--workdir={workdir}', '--split=test[:10'], tmp_path)
  assert_one_line_error(result, 'cnnjax.evaluate', 'Invalid split')
  image = tmp_path / 'big.png'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  (tmp_path / 'sitecustomize.py').write_text('import PIL.Image\nPIL.Image.MAX_IMAGE_PIXELS = 100\n')
  result = run_tool('cnnjax.predict', [f'--workdir={workdir}', str(image)], tmp_path,
                    {'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO_ROOT}'})
  assert_one_line_error(result, 'cnnjax.predict', 'too large to be read safely')
  os.rename(data, f'{data}-moved')
  result = run_tool('cnnjax.evaluate', [f'--workdir={workdir}'], tmp_path)
  assert_one_line_error(result, 'cnnjax.evaluate', f'The run read its data from {data}, which '
                        'does not exist', 'pass --local_data_dir=DIR where those files are now')
  assert tree_digest(workdir) == before
  (workdir / 'config.json').write_text('{"name": "cnn_simple", ')
  for tool, args in (('cnnjax.evaluate', []), ('cnnjax.predict', [str(image)])):
    result = run_tool(tool, [f'--workdir={workdir}', *args], tmp_path)
    assert_one_line_error(result, tool, 'config.json is unreadable (JSONDecodeError',
                          'It holds the config the run was started with: restore it from a '
                          'backup.')

def test_a_run_whose_every_checkpoint_is_unreadable_names_the_way_out(data, tmp_path):
  workdir = trained_run(data, tmp_path)
  for folder, _, files in os.walk(workdir / 'checkpoints'):
    for name in files:
      (Path(folder) / name).write_bytes(b'')  # A disk that lost them.
  before = tree_digest(workdir)
  for tool, args in (('cnnjax.evaluate', []), ('cnnjax.predict', [str(data)])):
    result = run_tool(tool, [f'--workdir={workdir}', *args], tmp_path)
    assert_one_line_error(result, tool, f'{workdir} holds no readable checkpoint (the warnings '
                          'above say why): restore its checkpoints/ folder from a copy, or train '
                          'the run again')
  assert tree_digest(workdir) == before  # Read, not moved: a reader changes nothing.
  result = run_tool('cnnjax.main', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                    '--config.batch_size=8', '--config.num_epochs=1',
                                    f'--workdir={workdir}'], tmp_path)
  assert_one_line_error(result, 'cnnjax', 'holds the results of a finished run but no readable '
                        'checkpoint, so it can be neither resumed nor reported again. Its results '
                        'were left as they are. Pass --config.resume=False to train afresh')
  assert (workdir / 'results.json').exists() and os.listdir(workdir / 'checkpoints_unreadable')


@pytest.mark.parametrize('payload, reason', [
    (b'', 'the file is empty'),
    (b'hello, not a picture', 'not in an image format Pillow reads'),
    (None, 'OSError: '),  # A PNG cut in half.
])
def test_an_unreadable_image_names_why(payload, reason):
  from cnnjax.data import images
  if payload is None:
    encoded = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(encoded, 'PNG')
    payload = encoded.getvalue()[:len(encoded.getvalue()) // 2]
  with pytest.raises(images.ImageInputError) as error:
    images.decode(payload, (28, 28, 1))
  assert str(error.value).startswith(f'is not an image that can be read ({reason}')
  assert error.value.reason.startswith(reason)  # What a list of skipped files shows.


def heic_photo(path, colour=(200, 60, 30)):
  """A HEIC image (as iPhones save photos) of one colour, written by pillow-heif."""
  import pillow_heif
  pillow_heif.from_pillow(Image.new('RGB', (40, 30), colour)).save(path, quality=90)
  return path


def test_heic_photos_are_read_with_the_heif_extra_and_named_without_it(tmp_path, monkeypatch,
                                                                      caplog):
  from cnnjax.data import image_tree, images
  for split in ('train', 'test'):
    for cls, colour in (('red', (200, 60, 30)), ('blue', (20, 40, 220))):
      os.makedirs(tmp_path / split / cls)
      heic_photo(str(tmp_path / split / cls / 'IMG_0001.HEIC'), colour)
      Image.new('RGB', (40, 30), colour).save(tmp_path / split / cls / 'IMG_0002.png')
  listing = image_tree.list_tree(str(tmp_path))
  classes = image_tree.class_names(listing, str(tmp_path))
  for streamed in (False, True):  # Decoded at once, or checked by header then decoded.
    if streamed:
      kept, _ = image_tree.stream_split(listing['train'], str(tmp_path), 'train', classes)
      decode = image_tree.decoder(kept, str(tmp_path), (30, 40, 3), True)
      pixels = np.stack([decode(i) for i in range(len(kept))])
    else:
      pixels, _, kept = image_tree.read_split(listing['train'], str(tmp_path), 'train', classes,
                                              (30, 40, 3), True)
    assert len(kept) == 4
    for f, image in zip(kept, pixels):  # Lossy HEVC: within a few levels of the colour.
      colour = (200, 60, 30) if f.cls == 'red' else (20, 40, 220)
      assert np.abs(image.reshape(-1, 3).mean(0) - colour).max() < 4, (f.name, colour)
  # Without pillow-heif, each is skipped with the extra to install named.
  monkeypatch.setattr(images, '_heif_readable', lambda: False)
  monkeypatch.setattr(Image, 'ID', [name for name in Image.ID if name != 'HEIF'])
  for streamed in (False, True):
    caplog.clear()
    if streamed:
      kept, _ = image_tree.stream_split(listing['train'], str(tmp_path), 'train', classes)
    else:
      kept = image_tree.read_split(listing['train'], str(tmp_path), 'train', classes,
                                   (30, 40, 3), True)[2]
    assert sorted(f.name for f in kept) == ['IMG_0002.png'] * 2
    assert "(HEIC/HEIF (iPhone photos): pip install pillow-heif to read it)" in caplog.text


def test_predict_reads_a_16_bit_png_as_its_8_bit_twin(data, tmp_path):
  from cnnjax import predict
  from cnnjax.data import images
  from tests.helpers import defaults
  workdir = trained_run(data, tmp_path)
  grey = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
  Image.fromarray(grey).save(tmp_path / 'eight.png')
  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / 'sixteen.png')
  assert Image.open(tmp_path / 'sixteen.png').mode.startswith('I')
  np.testing.assert_array_equal(images.load_image(str(tmp_path / 'sixteen.png'), (28, 28, 1)),
                                grey[..., None])
  eight, sixteen = predict.predict(str(workdir), [str(tmp_path / 'eight.png'),
                                                  str(tmp_path / 'sixteen.png')], defaults(), 10)
  assert [p['class'] for p in eight['top']] == [p['class'] for p in sixteen['top']]
  np.testing.assert_allclose([p['probability'] for p in eight['top']],
                             [p['probability'] for p in sixteen['top']], rtol=1e-5)


def test_a_32_bit_grey_tiff_is_scaled_by_its_type_not_clipped(tmp_path):
  from cnnjax.data import images
  grey = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
  Image.fromarray(grey.astype(np.int32) * 2 ** 23, 'I').save(tmp_path / 'wide.tiff')
  assert Image.open(tmp_path / 'wide.tiff').mode == 'I'
  read = images.load_image(str(tmp_path / 'wide.tiff'), (28, 28, 1))[..., 0].astype(int)
  assert np.abs(read - grey).max() <= 1 and read.max() < 255  # Scaled, where it was clipped.


def test_convert_and_diagnose_bad_input(data, tmp_path):
  target = tmp_path / 'a_file'
  target.write_text('keep me')
  result = run_tool('cnnjax.pretrained', ['convert', shared_weights_file('vgg16'), str(target)],
                    tmp_path)
  assert_one_line_error(result, 'cnnjax.pretrained', 'is a file')
  assert target.read_text() == 'keep me'
  result = run_tool('cnnjax.diagnose', [CNN_SIMPLE, f'--config.local_data_dir={data}',
                                        '--every=0'], tmp_path)
  assert_one_line_error(result, 'cnnjax.diagnose', 'every')
  # A habit from cnnjax.main: absl guessed among its own logging flags, 'did you mean log_dir?'.
  result = run_tool('cnnjax.diagnose', [CNN_SIMPLE, f'--workdir={tmp_path}/run'], tmp_path)
  assert_one_line_error(result, 'cnnjax.diagnose', 'unrecognized flag --workdir; the flags are '
                        '--config, --every, --help, --steps, --verbosity.')


def test_a_missing_class_folder_is_warned_about(tmp_path):
  from cnnjax.data import image_tree
  import logging
  archive = image_tree_archive(tmp_path, per_class=1)
  tree = tmp_path / 'tree'
  import shutil
  shutil.rmtree(tree / 'test' / 'cat')
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  try:
    load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tree))
  finally:
    logging.getLogger().removeHandler(handler)
  assert any('no images of class(es) cat' in r.getMessage() for r in records)
  del archive, image_tree
