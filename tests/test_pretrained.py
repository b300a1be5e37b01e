"""ImageNet weight files: the port equals Keras, bad files fail clearly, the cache is safe."""
import os
import subprocess
import sys
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from flax import traverse_util

from cnnjax.pretrained import weights as pretrained
from cnnjax.models import transfer
from cnnjax.training import params as params_lib
from cnnjax.training import stages
from cnnjax.training.steps import Metrics
from cnnjax.pretrained import __main__ as cli
from cnnjax.pretrained import files
from cnnjax.pretrained.h5 import WeightsFileError
from tests.helpers import (REPO_ROOT, backbone_variables, experiment, final_state,
                           jitted_train_step, load_config, shared_weights_file, shrink,
                           train_and_evaluate, write_keras_weights)

VGG16_NOTOP = 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'


def assert_trees_equal(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(flat_a) == set(flat_b)
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), str(key))


# --- Equivalence with Keras ---------------------------------------------------------------------

def keras_backbone(backbone, size, seed):
  """A Keras application model (weights=None) with random BatchNorm moving statistics."""
  keras = pytest.importorskip('keras', reason='the Keras comparison needs the test extra')
  ctor = {'vgg16': keras.applications.VGG16, 'mobilenet_v2': keras.applications.MobileNetV2}
  model = ctor[backbone](weights=None, include_top=False, input_shape=(size, size, 3))
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                         rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
  return model


def save_legacy_h5(model, path):
  import h5py
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize('backbone', ['vgg16', 'mobilenet_v2'])
@pytest.mark.parametrize('size', [96, 32])
def test_ported_backbone_equals_keras(backbone, size, tmp_path):
  model = keras_backbone(backbone, size, seed=size)
  path = str(tmp_path / 'weights.h5')
  save_legacy_h5(model, path)
  variables, detected = pretrained.port_h5(path)
  assert detected == backbone
  x = np.random.default_rng(1).uniform(0, 1, (3, size, size, 3)).astype(np.float32)
  expected = np.asarray(model(x, training=False))
  got = np.asarray(transfer.make_backbone(backbone).apply(variables, x))
  assert got.shape == expected.shape
  assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize('backbone', ['vgg16', 'mobilenet_v2'])
def test_keras_layer_order(backbone):
  model = keras_backbone(backbone, 96, seed=0)
  assert [layer.name for layer in model.layers][1:] == transfer.keras_layer_names(backbone)[1:]


def test_fine_tune_trains_what_keras_fine_tune_at_100_trains():
  """The Keras tutorial: base_model.trainable = True, then layers[:100] frozen again."""
  model = keras_backbone('mobilenet_v2', 96, seed=0)
  model.trainable = True
  for layer in model.layers[:100]:
    layer.trainable = False
  keras_trainable = {layer.name: sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
                     for layer in model.layers if layer.trainable_weights}
  config = load_config('cifar_mobilenet_transfer')
  state = jax.eval_shape(lambda: experiment(config).initial_state())
  pattern = stages.fine_tune_pattern(config, 'mobilenet_v2')
  tuned = params_lib.partition(params_lib.merge(state.params, state.frozen_params), pattern)[0]
  ours = {layer: params_lib.count(leaves) for layer, leaves in tuned['backbone'].items()}
  assert ours == keras_trainable
  assert 'block_11_expand' not in ours and 'block_11_depthwise' in ours
  assert params_lib.count(tuned) == 2_951_946 + sum(keras_trainable.values())


# --- The port maps by layer name and order; wrong files fail with everything listed -------------

@pytest.mark.parametrize('backbone', ['vgg16', 'mobilenet_v2'])
def test_port_reads_real_weight_name_spellings(backbone, tmp_path):
  variables = backbone_variables(backbone, seed=3)
  path = str(tmp_path / 'w.h5')
  write_keras_weights(path, backbone, variables)  # Keras-1 names for VGG16, as the real file.
  ported, detected = pretrained.port_h5(path)
  assert detected == backbone
  assert_trees_equal(ported, variables)


def test_truncated_file_is_named_corrupt(tmp_path):
  source = shared_weights_file('mobilenet_v2')
  path = tmp_path / 'truncated.h5'
  path.write_bytes(open(source, 'rb').read()[:200_000])
  with pytest.raises(WeightsFileError, match='truncated or corrupt'):
    pretrained.port_h5(str(path), 'mobilenet_v2')


def test_not_an_h5_file(tmp_path):
  """A file of another kind was 'truncated or corrupt', to be deleted: say a README given by
  mistake."""
  for name, text in (('page.h5', '<html>404</html>'), ('README.md', '# weights\n' * 100)):
    (tmp_path / name).write_text(text)
    with pytest.raises(WeightsFileError, match=r'not an HDF5 file \(no HDF5 signature at its '
                       r'start\): pass the Keras application .h5 weights file \(if this'):
      pretrained.port_h5(str(tmp_path / name))


def test_a_weights_file_this_user_may_not_read_is_named_so(tmp_path, monkeypatch):
  """Asking h5py whether such a file is HDF5 raises a PermissionError: a traceback. (The
  tests may run as root, whom no permission stops: h5py's refusal is played.)"""
  import errno
  import h5py
  def refused(path, mode):
    raise PermissionError(errno.EACCES, 'Unable to synchronously open file (Permission denied)')
  monkeypatch.setattr(h5py, 'File', refused)
  path = tmp_path / 'w.h5'
  path.write_bytes(b'\x89HDF\r\n\x1a\n' + bytes(100))
  with pytest.raises(WeightsFileError, match=r'w.h5 cannot be read by this user \(permission '
                     r'denied\): make it readable \(chmod -R a\+rX .*w.h5\), or pass a copy'):
    pretrained.port_h5(str(path))


def test_wrong_model_file_lists_missing_and_unexpected_layers():
  with pytest.raises(WeightsFileError) as error:
    pretrained.port_h5(shared_weights_file('mobilenet_v2'), 'vgg16')
  message = str(error.value)
  assert 'does not fit the vgg16 backbone' in message
  assert '13 missing layer(s): block1_conv1, block1_conv2' in message
  assert 'unexpected layer(s): Conv1, Conv_1' in message


def test_mis_shaped_array_is_named(tmp_path):
  variables = backbone_variables('vgg16')
  variables['params']['block3_conv2']['bias'] = np.zeros(7, np.float32)
  path = str(tmp_path / 'w.h5')
  write_keras_weights(path, 'vgg16', variables)
  with pytest.raises(WeightsFileError, match=r'1 mis-shaped: block3_conv2 -> params/block3_conv2'
                                             r'/bias: file \(7,\), model \(256,\)'):
    pretrained.port_h5(path, 'vgg16')


def test_wrong_checksum_of_a_published_file(tmp_path):
  path = tmp_path / VGG16_NOTOP
  path.write_bytes(open(shared_weights_file('vgg16'), 'rb').read())
  with pytest.raises(WeightsFileError, match='has MD5 .* but the published file has '
                                             '6d6bbae143d832006294945121d1f1fc'):
    pretrained.read_weights(str(path), 'vgg16')


# --- Cache and download ----------------------------------------------------------------------

@pytest.fixture
def served_mobilenet(tmp_path, monkeypatch):
  """MobileNetV2's Keras URL answered from a local file (file:// URLs send Content-Length)."""
  source = shared_weights_file('mobilenet_v2')
  real = files.imagenet_weights_file

  def local(backbone, image_size):
    return files.WeightsFile(real(backbone, image_size).name, f'file://{source}', None)
  monkeypatch.setattr(files, 'imagenet_weights_file', local)
  return source


def transfer_config(name, **overrides):
  config = shrink(load_config(name), **overrides)
  config.pretrained_path = ''
  return config


def weights_path(config, backbone):
  """Where a run of `config` takes its weights file from (the cache, downloading it once)."""
  return pretrained.weights_path(config.pretrained_path, backbone, config.model_kwargs.image_size)


def test_download_fills_the_cache_once(served_mobilenet, monkeypatch):
  config = transfer_config('cifar_mobilenet_transfer')
  path = weights_path(config, 'mobilenet_v2')
  assert path == os.path.join(os.environ['CNNJAX_CACHE'],
                              'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5')
  assert open(path, 'rb').read() == open(served_mobilenet, 'rb').read()
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded again'))
  assert weights_path(config, 'mobilenet_v2') == path


def offline(*args, **kwargs):
  raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')


def test_weights_keras_downloaded_fill_the_cache_offline(monkeypatch):
  """Who ran the Keras studies has the files in ~/.keras/models: no network is needed."""
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  config = transfer_config('cifar_mobilenet_transfer')
  name = files.imagenet_weights_file('mobilenet_v2', config.model_kwargs.image_size).name
  keras_copy = os.path.join(files.keras_cache_dir(), name)
  os.makedirs(os.path.dirname(keras_copy))
  source = open(shared_weights_file('mobilenet_v2'), 'rb').read()
  open(keras_copy, 'wb').write(source[:len(source) // 2])  # Cut off: refused, by its path.
  with pytest.raises(WeightsFileError, match=f'^{keras_copy} is not a readable HDF5 file'):
    weights_path(config, 'mobilenet_v2')
  assert os.listdir(os.environ['CNNJAX_CACHE']) == []
  open(keras_copy, 'wb').write(source)
  path = weights_path(config, 'mobilenet_v2')
  assert path == os.path.join(os.environ['CNNJAX_CACHE'], name)
  assert open(path, 'rb').read() == source
  os.remove(keras_copy)
  assert weights_path(config, 'mobilenet_v2') == path  # The cache's own copy, from now on.


class _CutOffResponse:
  """A response that announces the whole file and breaks off after the first chunk."""

  def __init__(self, size):
    self.headers, self._size, self._sent = {'Content-Length': str(size)}, size, False

  def read(self, n):
    if self._sent:
      raise ConnectionResetError('connection reset by peer')
    self._sent = True
    return b'\0' * min(n, self._size // 2)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def test_a_cut_off_download_never_becomes_the_cache(served_mobilenet, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen',
                      lambda *a, **k: _CutOffResponse(os.path.getsize(served_mobilenet)))
  config = transfer_config('cifar_mobilenet_transfer')
  with pytest.raises(WeightsFileError, match='Could not download .*ConnectionResetError'):
    weights_path(config, 'mobilenet_v2')
  assert os.listdir(os.environ['CNNJAX_CACHE']) == []  # No file, no leftover .part.


def test_a_download_of_the_wrong_file_is_rejected(tmp_path, monkeypatch):
  served = tmp_path / 'served.h5'
  served.write_bytes(open(shared_weights_file('vgg16'), 'rb').read())  # Not the published bytes.
  monkeypatch.setattr(files, 'imagenet_weights_file', lambda backbone, size: files.WeightsFile(
      VGG16_NOTOP, f'file://{served}', '6d6bbae143d832006294945121d1f1fc'))
  with pytest.raises(WeightsFileError, match='has MD5'):
    weights_path(transfer_config('vgg_transfer'), 'vgg16')
  assert os.listdir(os.environ['CNNJAX_CACHE']) == []


def test_a_cache_that_cannot_be_made_is_named_before_downloading(tmp_path, monkeypatch):
  """CNNJAX_CACHE on a drive not mounted (a link to nowhere): makedirs' FileExistsError."""
  from cnnjax.errors import UserError
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded'))
  (tmp_path / 'cache').symlink_to(tmp_path / 'drive' / 'cache')
  monkeypatch.setenv('CNNJAX_CACHE', str(tmp_path / 'cache'))
  with pytest.raises(UserError, match=f'^The weights cache {tmp_path}/cache cannot be made: '
                     f'{tmp_path}/cache is a link to {tmp_path}/drive/cache, which does not '
                     'exist.*or choose another CNNJAX_CACHE.$'):
    weights_path(transfer_config('vgg_transfer'), 'vgg16')


def test_download_refuses_an_image_size_below_one(capsys):
  with pytest.raises(SystemExit) as exited:
    cli.main(['download', 'mobilenet_v2', '--image_size=-5'])
  assert exited.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      'python -m cnnjax.pretrained download: error: --image_size must be 1 or more, not -5.')


def test_offline_without_a_file_says_where_to_put_it(monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(WeightsFileError) as error:
    weights_path(transfer_config('vgg_transfer'), 'vgg16')
  message = str(error.value)
  assert 'Could not download' in message and 'Without network' in message
  assert os.path.join(os.environ['CNNJAX_CACHE'], VGG16_NOTOP) in message
  assert '--config.pretrained_path=' in message


# --- Converted checkpoints and loading into a model -------------------------------------------

def test_converter_round_trip(tmp_path, capsys):
  out = tmp_path / 'converted'
  assert cli.main(['convert', shared_weights_file('mobilenet_v2'), str(out)]) == 0
  assert f'--config.pretrained_path={out}' in capsys.readouterr().out
  from_h5, info_h5 = pretrained.read_weights(shared_weights_file('mobilenet_v2'), 'mobilenet_v2')
  from_dir, info_dir = pretrained.read_weights(str(out), 'mobilenet_v2')
  assert_trees_equal(from_h5, from_dir)
  assert info_h5 == info_dir  # The source file's name and MD5 travel with the conversion.
  with pytest.raises(WeightsFileError, match='holds mobilenet_v2 weights'):
    pretrained.read_weights(str(out), 'vgg16')
  with pytest.raises(SystemExit) as stopped:  # No overwrite: one line, exit status 2.
    cli.main(['convert', shared_weights_file('mobilenet_v2'), str(out)])
  assert stopped.value.code == 2
  assert 'not empty' in capsys.readouterr().err


def test_a_conversion_that_fails_midway_leaves_no_directory(tmp_path):
  variables, _ = pretrained.read_weights(shared_weights_file('mobilenet_v2'), 'mobilenet_v2')
  out = tmp_path / 'converted'
  with pytest.raises(TypeError):  # After the arrays are saved: source.json cannot be written.
    pretrained.save_converted(variables, str(out), {'backbone': object()})
  assert os.listdir(tmp_path) == []  # Neither OUT_DIR nor its .partial sibling.
  out.mkdir()  # An empty OUT_DIR is written into.
  pretrained.save_converted(variables, str(out), {'backbone': 'mobilenet_v2', 'file': 'x.h5',
                                                  'md5': '0'})
  assert_trees_equal(variables, pretrained.read_weights(str(out), 'mobilenet_v2')[0])
  (out / 'source.json').write_text('{"backbone": "mobilenet_v2"}')  # Edited by hand.
  with pytest.raises(WeightsFileError, match='source.json lacks file, md5.*convert IN.h5'):
    pretrained.read_weights(str(out), 'mobilenet_v2')


def test_a_converted_directory_whose_arrays_are_cut_short_names_the_array(tmp_path):
  """Orbax's error quotes tensorstore's whole spec; the one line gives the error under it,
  and the reads it abandoned print nothing as they end."""
  import glob
  import re
  variables, _ = pretrained.read_weights(shared_weights_file('mobilenet_v2'), 'mobilenet_v2')
  out = tmp_path / 'converted'
  pretrained.save_converted(variables, str(out), {'backbone': 'mobilenet_v2', 'file': 'x.h5',
                                                  'md5': '0'})
  data = glob.glob(str(out / '**' / 'd' / '*'), recursive=True)
  with open(max(data, key=os.path.getsize), 'r+b') as f:  # The arrays' chunks.
    f.truncate(8)
  with pytest.raises(WeightsFileError, match='convert IN.h5') as error:
    pretrained.read_weights(str(out), 'mobilenet_v2')
  assert re.search(r'OUT_OF_RANGE: Error reading "[\w.]+/', str(error.value)), error.value
  assert 'TensorStore details' not in str(error.value)
  read = subprocess.run(  # In a process of its own: the abandoned reads end as it exits.
      [sys.executable, '-c', 'import sys\nfrom cnnjax.pretrained import weights\n'
       'try:\n  weights.read_weights(sys.argv[1], "mobilenet_v2")\n'
       'except weights.WeightsFileError as e:\n  print(e)', str(out)],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=True)
  assert 'is not a readable converted weights directory' in read.stdout
  assert read.stderr == '', read.stderr[-2000:]


def test_reads_that_end_before_the_failed_read_is_reported_print_nothing(tmp_path, monkeypatch,
                                                                         capfd):
  """Orbax closes its event loop as a restore gives up; the reads still in flight end from
  then on, some before `read_converted` reached its `except`, and those printed an 'Event
  loop is closed' traceback now and then, as the threads' timing had it."""
  import json
  import orbax.checkpoint as ocp
  from tests.helpers import AbandonedRead
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)  # As a fresh process.
  (tmp_path / pretrained.SOURCE_FILE).write_text(json.dumps(
      {'backbone': 'mobilenet_v2', 'file': 'x.h5', 'md5': '0'}))

  def restore_whose_reads_end_as_it_fails(self, *args, **kwargs):
    AbandonedRead()  # Collected at once: its error is unraisable.
    raise ValueError('OUT_OF_RANGE: Error reading "params.x/0"')
  monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', restore_whose_reads_end_as_it_fails)
  with pytest.raises(WeightsFileError, match='OUT_OF_RANGE'):
    pretrained.read_weights(str(tmp_path), 'mobilenet_v2')
  assert capfd.readouterr().err == ''


def test_command_line_stopped_at_its_start_ends_in_one_line(tmp_path):
  import signal
  from tests.helpers import ctrl_c_after, past_a_tools_handler
  source = str(tmp_path / 'weights.h5')
  write_keras_weights(source, 'mobilenet_v2', backbone_variables('mobilenet_v2'))
  early = past_a_tools_handler(0.1)
  for delay in (early, early + 0.2):  # While python, then jax and the rest import.
    process, stdout, stderr = ctrl_c_after(
        delay, ['-m', 'cnnjax.pretrained', 'convert', source, str(tmp_path / 'out')])
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert 'Traceback' not in stderr, stderr[-2000:]
    assert stdout.strip() == ('Stopped by SIGINT before it finished: no converted directory '
                              'or cached weights file was made.')
  assert sorted(os.listdir(tmp_path)) == ['weights.h5']


def test_run_starts_from_the_file_and_records_it(tmp_path, mock_tfds):
  config = shrink(load_config('vgg_transfer'))
  results = train_and_evaluate(config, str(tmp_path))
  assert results['pretrained'] is True and results['pretrained_arrays'] == 26
  state = final_state(config, tmp_path)
  file_variables, info = pretrained.read_weights(config.pretrained_path, 'vgg16')
  assert results['pretrained_md5'] == info['pretrained_md5']
  assert_trees_equal(jax.device_get(state.frozen_params['backbone']), file_variables['params'])


def test_pretrained_load_selects_what_comes_from_the_file(tmp_path, mock_tfds):
  config = shrink(load_config('vgg_transfer'), pretrained_load='^backbone/block1_')
  variables = experiment(config).variables
  loaded, info = pretrained.load_into(variables, config.pretrained_load, 'vgg16',
                                      config.pretrained_path)
  file_variables, _ = pretrained.read_weights(config.pretrained_path, 'vgg16')
  assert info['pretrained_arrays'] == 4
  np.testing.assert_array_equal(loaded['params']['backbone']['block1_conv2']['kernel'],
                                file_variables['params']['block1_conv2']['kernel'])
  np.testing.assert_array_equal(loaded['params']['backbone']['block2_conv1']['kernel'],
                                variables['params']['backbone']['block2_conv1']['kernel'])
  with pytest.raises(WeightsFileError, match='does not hold: head_'):
    pretrained.load_into(variables, '^head', 'vgg16', config.pretrained_path)


def test_frozen_backbone_gets_no_optimizer_state_and_stays_bitwise_unchanged():
  config = shrink(load_config('cifar_mobilenet_transfer'))
  setup = experiment(config)
  variables, _ = pretrained.load_into(setup.variables, config.pretrained_load, 'mobilenet_v2',
                                      config.pretrained_path)
  state = setup.initial_state(variables)
  before = jax.device_get(state)
  assert set(state.params) == {'head_hidden', 'head_logits'}
  assert set(state.opt_state[0].mu) == {'head_hidden', 'head_logits'}  # Adam's moments.
  step = jitted_train_step(setup)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  for _ in range(3):
    state, _, _ = step(state, images, labels, Metrics.empty())
  after = jax.device_get(state)
  assert_trees_equal(before.frozen_params, after.frozen_params)
  assert_trees_equal(before.batch_stats, after.batch_stats)  # Frozen BatchNorm: inference mode.
  for layer in ('head_hidden', 'head_logits'):
    assert not np.array_equal(before.params[layer]['kernel'], after.params[layer]['kernel'])


NO_NETWORK = '''
import urllib.error, urllib.request
def _offline(*args, **kwargs):
  raise urllib.error.URLError('network unreachable')
urllib.request.urlopen = _offline
'''


def test_command_line_offline_without_weights_fails_before_reading_data(tmp_path, idx_dir):
  (tmp_path / 'sitecustomize.py').write_text(NO_NETWORK)
  env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO_ROOT}'}
  result = subprocess.run(
      [sys.executable, '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/vgg_transfer.py',
       f'--config.local_data_dir={idx_dir}', f'--workdir={tmp_path}/run'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'cnnjax: error: Could not download ImageNet weights' in result.stderr
  assert '--config.pretrained_path=' in result.stderr and 'Traceback' not in result.stderr
  assert 'Loaded fashion_mnist' not in result.stderr  # Failed before reading any data.
  assert not os.path.exists(tmp_path / 'run')
