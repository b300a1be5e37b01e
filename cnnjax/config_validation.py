"""Rejects a bad config before any data is read or any step compiled.

Each error names the field and says what would be valid, so a typo costs a
second, not a failed hour-long run.
"""
import os
import re

import ml_collections

from cnnjax import datasets
from cnnjax import sharding
from cnnjax import splits
from cnnjax.models import build_model

class ConfigError(ValueError):
  """A config field is unknown or invalid; the message names it."""


POSITIVE_INT_FIELDS = ('batch_size', 'eval_batch_size', 'num_epochs', 'keep_checkpoints')


def _default_fields() -> set[str]:
  from configs import default  # The single list of fields.
  return set(default.get_config().keys())


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first field that is unknown or out of range."""
  unknown = sorted(set(config.keys()) - _default_fields())
  if unknown:
    raise ConfigError(f'Unknown config field(s) {unknown}: not defined in configs/default.py. '
                      'Check the spelling, or add the field to configs/default.py.')
  for field in POSITIVE_INT_FIELDS:
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f'config.{field} must be a positive integer, got {value!r}.')
  if not isinstance(config.checkpoint_every_steps, int) or config.checkpoint_every_steps < 0:
    raise ConfigError('config.checkpoint_every_steps must be 0 (off) or a positive integer, '
                      f'got {config.checkpoint_every_steps!r}.')
  if not config.learning_rate > 0:
    raise ConfigError(f'config.learning_rate must be positive, got {config.learning_rate!r}.')
  if config.dataset not in datasets.DATASETS:
    raise ConfigError(f'Unknown dataset {config.dataset!r} (config.dataset); '
                      f'known: {sorted(datasets.DATASETS)}.')
  for field in ('train_split', 'val_split', 'test_split'):
    if config[field] or field != 'val_split':
      try:
        splits.parse_split(config[field])
      except ValueError as e:
        raise ConfigError(f'config.{field}: {e}') from e
  if config.local_data_dir and not os.path.exists(config.local_data_dir):
    raise ConfigError(f'config.local_data_dir={config.local_data_dir!r} does not exist. '
                      'Point it at the folder (or .tar.gz) that holds the dataset files.')
  try:
    re.compile(config.trainable)
  except re.error as e:
    raise ConfigError(f'config.trainable={config.trainable!r} is not a valid regex: {e}') from e
  if config.pretrained not in ('', 'imagenet'):
    raise ConfigError(f"config.pretrained must be '' or 'imagenet', got {config.pretrained!r}.")
  try:
    # Unknown model names and model options fail here, with the valid ones listed;
    # so does a batch size that does not divide over the devices.
    build_model(config.model, len(datasets.DATASETS[config.dataset].class_names),
                config.trainable, config.model_kwargs)
    sharding.check_batch_size(config.batch_size)
    sharding.check_batch_size(config.eval_batch_size, 'config.eval_batch_size')
  except ValueError as e:
    raise ConfigError(str(e)) from e
