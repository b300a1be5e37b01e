"""Rejects a bad config before any data is read or any step compiled.

Each error names the field and says what would be valid, so a typo costs a
second, not a failed hour-long run.
"""
import math
import os
import re

import ml_collections

from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import splits
from cnnjax.errors import ConfigError, unreadable_message
from cnnjax.models import build_model
from cnnjax.models import transfer
from cnnjax.runs import selection
from cnnjax.training import dispatch
from cnnjax.training import features
from cnnjax.training import optimizers
from cnnjax.training import recipes
from cnnjax.training import stages

POSITIVE_INT_FIELDS = ('batch_size', 'eval_batch_size', 'num_epochs', 'keep_checkpoints',
                       'collapse_guard.every_steps', 'collapse_guard.patience_steps')


# Sub-configs whose fields belong to someone else: model_kwargs are checked by the model.
OPEN_FIELDS = ('model_kwargs',)


def _unknown_fields(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict,
                    prefix: str = '') -> list[str]:
  unknown = []
  for key in config.keys():
    if key not in default:
      unknown.append(prefix + key)
    elif (isinstance(default[key], ml_collections.ConfigDict) and key not in OPEN_FIELDS
          and isinstance(config[key], ml_collections.ConfigDict)):
      unknown += _unknown_fields(config[key], default[key], f'{prefix}{key}.')
  return sorted(unknown)


def _value(config: ml_collections.ConfigDict, field: str):
  """`config.<field>`, `field` dotted ('augment.crop_padding')."""
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive(config: ml_collections.ConfigDict, field: str, zero_means_off: bool = False
                    ) -> None:
  """`config.<field>` is a finite number above 0 (or 0, where it turns a feature off): `inf`
  passes a plain `> 0` and turns the first step's loss into NaN."""
  value = _value(config, field)
  if not (_is_number(value) and math.isfinite(value)
          and (value > 0 or (zero_means_off and value == 0))):
    allowed = '0 (off) or a positive finite number' if zero_means_off else 'positive and finite'
    raise ConfigError(f'config.{field} must be {allowed}, got {value!r}.')


# Steps and counts reach jitted code as JAX's default 32-bit integers.
LARGEST_COUNT = 2 ** 31 - 1


def _check_count(config: ml_collections.ConfigDict, field: str, zero_means: str = '') -> None:
  """`config.<field>` is an integer from 1, or from 0 where `zero_means` says what 0 does, up
  to `LARGEST_COUNT`."""
  value = _value(config, field)
  if not (isinstance(value, int) and not isinstance(value, bool)
          and value >= (0 if zero_means else 1)):
    allowed = f'0 ({zero_means}) or a positive integer' if zero_means else 'a positive integer'
    raise ConfigError(f'config.{field} must be {allowed}, got {value!r}.')
  if value > LARGEST_COUNT:
    raise ConfigError(f'config.{field}={value} is beyond 2**31 - 1, the largest count that '
                      "JAX's 32-bit integers hold.")


def _check_fraction(config: ml_collections.ConfigDict, field: str, one_allowed: bool = False,
                    zero_means: str = '') -> None:
  """`config.<field>` is in [0, 1), or [0, 1] where `one_allowed`."""
  value = _value(config, field)
  if not (_is_number(value) and 0 <= value and (value < 1 or one_allowed and value == 1)):
    interval = '[0, 1]' if one_allowed else '[0, 1)'
    raise ConfigError(f'config.{field} must be in {interval}'
                      + (f' ({zero_means})' if zero_means else '') + f', got {value!r}.')


def _check_fine_tune(config: ml_collections.ConfigDict, backbone: str | None) -> None:
  fine_tune = config.fine_tune
  _check_count(config, 'fine_tune.num_epochs', zero_means='no fine-tuning')
  if not fine_tune.num_epochs:
    return
  if backbone is None:
    raise ConfigError(f'config.fine_tune.num_epochs={fine_tune.num_epochs} needs a model with a '
                      f'pretrained backbone; {config.model!r} has none.')
  if fine_tune.unfreeze_from:
    names = transfer.keras_layer_names(backbone)
    if fine_tune.unfreeze_from not in names:
      raise ConfigError(f'config.fine_tune.unfreeze_from={fine_tune.unfreeze_from!r} is not a '
                        f'layer of the {backbone} backbone (Keras names, e.g. {names[-3]!r}).')
    if fine_tune.unfreeze_blocks:
      raise ConfigError('Set config.fine_tune.unfreeze_from or config.fine_tune.unfreeze_blocks, '
                        'not both.')
  else:
    blocks = len(transfer.backbone_blocks(backbone))
    if (not isinstance(fine_tune.unfreeze_blocks, int)
        or not 1 <= fine_tune.unfreeze_blocks <= blocks):
      raise ConfigError(f'config.fine_tune.unfreeze_blocks must be between 1 and {blocks} (the '
                        f'{backbone} backbone has {blocks} blocks), got '
                        f'{fine_tune.unfreeze_blocks!r}; or name a layer in '
                        'config.fine_tune.unfreeze_from.')
  _check_positive(config, 'fine_tune.learning_rate')
  if fine_tune.batchnorm not in stages.BATCHNORM_MODES:
    raise ConfigError(f'config.fine_tune.batchnorm must be one of {stages.BATCHNORM_MODES}, got '
                      f'{fine_tune.batchnorm!r}.')


def _check_pretrained(config: ml_collections.ConfigDict, backbone: str | None) -> None:
  if config.pretrained not in ('', 'imagenet'):
    raise ConfigError(f"config.pretrained must be '' or 'imagenet', got {config.pretrained!r}.")
  if config.pretrained and backbone is None:
    raise ConfigError(f'config.pretrained={config.pretrained!r}, but model {config.model!r} has '
                      'no pretrained backbone (use vgg16_classifier or mobilenet_v2_classifier).')
  if config.pretrained_path and not os.path.exists(config.pretrained_path):
    raise ConfigError(f'config.pretrained_path={config.pretrained_path!r} does not exist. Point '
                      'it at the Keras .h5 weights file, or a directory made by '
                      'python -m cnnjax.pretrained convert.')


def _check_data(config: ml_collections.ConfigDict) -> None:
  """The data fields' values (whether a dataset name exists is known once it is described:
  TFDS' names need TensorFlow to list)."""
  if str(config.data_in_memory).lower() not in datasets.IN_MEMORY_CHOICES:
    raise ConfigError(f'config.data_in_memory must be one of {datasets.IN_MEMORY_CHOICES}, got '
                      f'{config.data_in_memory!r}.')
  for field in ('image_size', 'data_workers'):
    _check_count(config, field, zero_means='the default')
  if config.channels not in (0, 1, 3):
    raise ConfigError(f'config.channels must be 1 (grey), 3 (RGB) or 0 (the dataset\'s own), '
                      f'got {config.channels!r}.')


def _check_recipe(config: ml_collections.ConfigDict) -> None:
  """The optimisation and augmentation fields beyond the studies' recipe."""
  for field, choices in (('optimizer', recipes.OPTIMIZERS), ('schedule', recipes.SCHEDULES)):
    if config[field] not in choices:
      raise ConfigError(f'config.{field} must be one of {choices}, got {config[field]!r}.')
  for field in ('weight_decay', 'grad_clip_norm'):
    _check_positive(config, field, zero_means_off=True)
  for field in ('learning_rate', 'adam_epsilon'):
    _check_positive(config, field)
  if config.weight_decay and config.optimizer == 'adam':
    raise ConfigError('config.weight_decay needs --config.optimizer=adamw (decoupled) or sgd; '
                      "Adam's would be L2 through the moments, which cnnjax does not offer.")
  _check_count(config, 'plateau_patience')
  _check_fraction(config, 'ema_decay', zero_means='0 = off')
  _check_fraction(config, 'momentum')
  _check_fraction(config, 'label_smoothing')
  boundaries = config.lr_boundaries
  if not (isinstance(boundaries, (tuple, list)) and all(_is_number(b) and 0 < b < 1
                                                        for b in boundaries)
          and list(boundaries) == sorted(set(boundaries))):
    raise ConfigError('config.lr_boundaries are fractions of a stage\'s steps, each in (0, 1), '
                      f'increasing (e.g. 0.5,0.75); got {boundaries!r}.')
  if not 0 < config.lr_decay_factor < 1:  # 0 would stop training without a word.
    raise ConfigError('config.lr_decay_factor multiplies the learning rate at each cut: it must '
                      f'be in (0, 1), got {config.lr_decay_factor!r}.')
  for field in ('augment.crop_padding', 'augment.translate_test'):
    _check_count(config, field, zero_means='off')
  _check_fraction(config, 'augment.erasing_prob', one_allowed=True)
  augment = config.augment
  augmenting = (augment.crop_padding or augment.flip or augment.erasing_prob or augment.flip_test
                or augment.translate_test)
  if augmenting and config.cache_features:
    raise ConfigError('config.augment changes the images every step, so their backbone features '
                      'cannot be cached: set --config.cache_features=False.')


def nominal_classes(config: ml_collections.ConfigDict) -> int:
  """The class count to check the model's options with (any count builds the same layers);
  exact for a dataset cnnjax knows."""
  known = datasets.DATASETS.get(config.dataset)
  return len(known.class_names) if known else 2


def nominal_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """An image shape to check which parameters train (any shape has the same parameters);
  exact for a dataset cnnjax knows, before any data is read."""
  known = datasets.DATASETS.get(config.dataset)
  height, width, channels = known.image_shape if known else (32, 32, 3)
  return (config.image_size or height, config.image_size or width, config.channels or channels)


def _check_name(name) -> None:
  """The run's name is one folder's: its default workdir is checkpoints/<name>. Empty (an
  unset shell variable in `--config.name=$NAME`), the run would write into checkpoints/
  itself, among the other runs; a path ('../x', 'a/b') would put it outside or below them."""
  if not isinstance(name, str) or name in ('', '.', '..') or os.path.basename(name) != name:
    raise ConfigError(f'config.name={name!r} must be a folder name (the default workdir is '
                      'checkpoints/<name>), e.g. --config.name=cnn_simple_lr1e-4; to run '
                      'elsewhere, pass --workdir=PATH.')


def check_model(config: ml_collections.ConfigDict):
  """The model `config` names, built (not initialised): an unknown model name or option is
  a ConfigError that lists the valid ones."""
  try:
    return build_model(config.model, nominal_classes(config), config.trainable,
                       config.model_kwargs)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def validate_config(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
                    ) -> None:
  """Raises ConfigError naming the first field that is unknown or out of range.

  `defaults` (configs/default.py, which the entry points pass) is the single
  list of the fields a config may set.
  """
  unknown = _unknown_fields(config, defaults)
  if unknown:
    raise ConfigError(f'Unknown config field(s) {unknown}: not defined in configs/default.py. '
                      'Check the spelling, or add the field to configs/default.py.')
  _check_name(config.name)
  for field in POSITIVE_INT_FIELDS:
    _check_count(config, field)
  if (not isinstance(config.num_train_steps, int) or config.num_train_steps == 0
      or config.num_train_steps < -1):
    raise ConfigError('config.num_train_steps must be -1 (the whole run) or a positive integer, '
                      f'got {config.num_train_steps!r}.')
  if config.num_train_steps > 0:
    _check_count(config, 'num_train_steps')
  _check_count(config, 'steps_per_dispatch', zero_means=(
      f'1 on CPU, {dispatch.ACCELERATOR_STEPS_PER_DISPATCH} on GPU/TPU'))
  if str(config.data_on_device).lower() not in dispatch.DATA_ON_DEVICE_CHOICES:
    raise ConfigError(f'config.data_on_device must be one of {dispatch.DATA_ON_DEVICE_CHOICES}, '
                      f'got {config.data_on_device!r}.')
  if (str(config.data_on_device).lower(), str(config.data_in_memory).lower()) == ('true',
                                                                                  'false'):
    raise ConfigError('config.data_on_device=true needs the training split in memory, and '
                      'config.data_in_memory=false streams it: pass one of them as auto.')
  _check_count(config, 'checkpoint_every_steps', zero_means='off')
  _check_positive(config, 'collapse_guard.loss_band')
  _check_count(config, 'warmup_steps', zero_means='no warmup')
  if config.adam_update not in optimizers.UPDATES:
    raise ConfigError(f'config.adam_update must be one of {optimizers.UPDATES}, got '
                      f'{config.adam_update!r}.')
  # JAX keys hold 32 bits of the seed: 2**32 would initialise as 0 does.
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2 ** 32:
    raise ConfigError(f'config.seed must be an integer from 0 to 2**32 - 1, got {config.seed!r}.')
  _check_data(config)
  _check_recipe(config)
  selection.Selection.from_config(config)
  for field in ('train_split', 'val_split', 'test_split'):
    if config[field] or field != 'val_split':
      try:
        splits.parse_split(config[field])
      except ValueError as e:
        raise ConfigError(f'config.{field}: {e}') from e
  if config.local_data_dir and not os.path.exists(config.local_data_dir) and (
      '://' in config.local_data_dir):
    raise ConfigError(f'config.local_data_dir={config.local_data_dir!r} is a web address; it '
                      'takes files: download the archive first, then point it at the file or '
                      'the folder it unpacks to.')
  if config.local_data_dir and not os.path.exists(config.local_data_dir):
    raise ConfigError(f'config.local_data_dir={config.local_data_dir!r} does not exist. '
                      'Point it at the folder (or .tar.gz) that holds the dataset files.')
  if config.local_data_dir and not os.access(config.local_data_dir, os.R_OK | (
      os.X_OK if os.path.isdir(config.local_data_dir) else 0)):  # Else a PermissionError later.
    raise ConfigError(unreadable_message(f'config.local_data_dir={config.local_data_dir!r}',
                                         config.local_data_dir)
                      + ', or copy the dataset where you can read it.')
  for field in ('trainable', 'pretrained_load'):
    try:
      re.compile(config[field])
    except re.error as e:
      raise ConfigError(f'config.{field}={config[field]!r} is not a valid regex: {e}') from e
  model = check_model(config)
  try:  # Evaluation rounds its batch up to a multiple of the devices (see steps.Trainer).
    sharding.check_batch_size(config.batch_size)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  backbone = getattr(model, 'backbone', None)
  _check_pretrained(config, backbone)
  _check_fine_tune(config, backbone)
  if config.cache_features:
    try:
      features.check_cacheable(model, nominal_shape(config), config.trainable)
    except ValueError as e:
      raise ConfigError(str(e)) from e
