"""Local split slicing selects exactly the examples TFDS would."""
import pytest

from cnnjax.data import splits


@pytest.mark.parametrize('spec', ['train', 'train[:80%]', 'train[80%:]', 'train[33%:67%]',
                                  'train[10:25]', 'train[-7:]', 'train[:-3%]',
                                  'train[:80%]+test[-3:]'])
@pytest.mark.parametrize('num_train', [50_000, 10, 7, 333])
def test_same_examples_as_tfds(spec, num_train):
  from tensorflow_datasets.core import splits as tfds_splits
  import tensorflow_datasets as tfds
  sizes = {'train': num_train, 'test': 10}
  infos = {name: tfds_splits.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                                       filename_template=None) for name, n in sizes.items()}
  expected = []
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  except ValueError:
    with pytest.raises(ValueError, match='beyond'):
      [splits.slice_indices(part, sizes[part.name]) for part in splits.parse_split(spec)]
    return
  for instruction in instructions:
    n = sizes[instruction.splitname]
    expected.append((instruction.splitname, list(range(n))[instruction.from_:instruction.to]))
  got = [(part.name, list(splits.slice_indices(part, sizes[part.name])))
         for part in splits.parse_split(spec)]
  assert got == expected


@pytest.mark.parametrize('spec', ['train[:80', 'train[a:b]', 'train[1:2:3]', 'tr ain[', ''])
def test_bad_syntax_is_rejected(spec):
  with pytest.raises(ValueError, match='Invalid split'):
    splits.parse_split(spec)


def test_a_misspelt_split_names_the_one_meant(tmp_path):
  from cnnjax.data import dataset_files, idx_files
  from cnnjax.data.image_tree import LocalDataError
  from tests.helpers import make_idx_dataset
  make_idx_dataset(str(tmp_path))
  with pytest.raises(LocalDataError, match=r"^IDX datasets have splits \['test', 'train'\], not "
                                           r"'tset'; did you mean 'test'\?$"):
    idx_files.idx_files(dataset_files.DatasetFiles(str(tmp_path)), 'tset')
  assert splits.unknown_split_message('CSV datasets', 'validation', ('train', 'test')) == (
      "CSV datasets have splits ['test', 'train'], not 'validation'.")


def test_examples_shared_with_training_are_counted_and_warned_of(tmp_path, caplog):
  """A val_split set without narrowing train_split trained on the validation examples: its
  figures, and the epoch it picks, looked better than the model is, without a word."""
  import logging
  from tests.helpers import load_dataset, make_idx_dataset
  sizes = {'train': 40, 'test': 20}.__getitem__
  assert splits.shared_examples('train', 'train[80%:]', sizes) == 8
  assert splits.shared_examples('train[:80%]', 'train[80%:]', sizes) == 0
  assert splits.shared_examples('train[:10]+test', 'train[5:15]+test[-4:]', sizes) == 5 + 4
  make_idx_dataset(str(tmp_path))  # 40 train, 20 test examples.
  with caplog.at_level(logging.WARNING):
    load_dataset('fashion_mnist', 'train[:80%]', 'train[80%:]', 'test',
                 local_data_dir=str(tmp_path))
    assert not caplog.records
    load_dataset('fashion_mnist', 'train', 'train[80%:]', 'train[:10]+test',
                 local_data_dir=str(tmp_path))
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 2
  assert messages[0].startswith("config.train_split='train' and config.val_split='train[80%:]' "
                                'share 8 examples: the validation figures measure examples')
  assert messages[1].startswith("config.train_split='train' and "
                                "config.test_split='train[:10]+test' share 10 examples: the test")
