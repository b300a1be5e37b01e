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
