"""Shared pytest fixtures; the helpers tests import are in tests/helpers.py."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest

from tests.helpers import make_idx_dataset


@pytest.fixture(autouse=True)
def private_weights_cache(tmp_path_factory, monkeypatch):
  """No test reads or fills the user's ~/.cache/cnnjax."""
  monkeypatch.setenv('CNNJAX_CACHE', str(tmp_path_factory.mktemp('cache')))


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
