"""Shared pytest fixtures; the helpers tests import are in tests/helpers.py."""
import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Many tests compile the same small programs (shrunken configs, in-process and in the
# subprocesses that inherit this environment): jax's persistent compilation cache compiles
# each once per machine. Entries are keyed by the program and its compiler options.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'cnnjax-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest

from tests.helpers import make_idx_dataset


@pytest.fixture(autouse=True)
def temporary_files_under_pytests_folder(tmp_path_factory, monkeypatch):
  """Temporary files go under pytest's own folder, which it prunes, not the machine's /tmp:
  TFDS leaves an empty `tmp*tfds` folder there for each builder of a dataset it has not
  prepared (every mocked one), hundreds per run of the suite."""
  folder = str(tmp_path_factory.mktemp('tmp'))
  monkeypatch.setattr(tempfile, 'tempdir', folder)
  monkeypatch.setenv('TMPDIR', folder)  # And the subprocesses' temporary files.


@pytest.fixture(autouse=True)
def private_weights_cache(tmp_path_factory, monkeypatch):
  """No test reads or fills the user's ~/.cache/cnnjax, or reads Keras' ~/.keras."""
  monkeypatch.setenv('CNNJAX_CACHE', str(tmp_path_factory.mktemp('cache')))
  monkeypatch.setenv('KERAS_HOME', str(tmp_path_factory.mktemp('keras')))


@pytest.fixture(autouse=True)
def stop_signal_handlers_restored():
  """A script's main called in-process (ablation's, once its pages are written) installs a
  handler for its last moments, as a command does: left in place, a later test in the same
  worker that checks the handlers a run leaves behind found it there."""
  import signal
  from cnnjax.runs import exit_at_once
  kept = {s: signal.getsignal(s) for s in exit_at_once.SIGNALS}
  yield
  for s, handler in kept.items():
    signal.signal(s, handler)


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


@pytest.fixture
def mock_tfds_64():
  """Mock TFDS data with 64 examples per split: enough for a study config's batch of 64."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=64):
    yield
