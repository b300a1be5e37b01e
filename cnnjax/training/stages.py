"""Training stages: transfer learning with a frozen backbone, then fine-tuning.

A run is one stage (everything `config.trainable` matches trains, Adam at
`config.learning_rate`) unless `config.fine_tune.num_epochs > 0`: then, as in
the study of MobileNetV2 on CIFAR-10, `config.num_epochs` of transfer
learning are followed by a fine-tuning stage that also unfreezes the top
`config.fine_tune.unfreeze_blocks` blocks of the backbone (or, as Keras'
`layers[fine_tune_at:]`, every layer from `config.fine_tune.unfreeze_from` on), with a fresh
optimizer at `config.fine_tune.learning_rate`. Stage boundaries are epoch
boundaries and steps count on across stages, so the data order, checkpoints
and resume work as in a one-stage run.

Which BatchNorm layers train follows Keras' advice for fine-tuning
(`fine_tune.batchnorm='inference'`): unfrozen BatchNorms keep using their
ImageNet moving statistics while their scale and offset train;
`'train'` lets them switch to batch statistics.
"""
import dataclasses

import ml_collections

from cnnjax.models import transfer

BATCHNORM_MODES = ('inference', 'train')


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str                 # 'train' (one-stage runs), 'transfer' or 'fine_tune'.
  end_epoch: int            # Exclusive; the last stage may be cut short (num_train_steps).
  trainable: str            # Regex: the parameters the optimizer updates.
  batchnorm_trainable: str  # Regex: the BatchNorm layers that use batch statistics.
  learning_rate: float
  cache_features: bool = False  # Train the head on cached backbone features (see `features`).

  def end_step(self, steps_per_epoch: int, total_steps: int) -> int:
    """The step this stage ends at (exclusive), in a run of `total_steps` steps."""
    return min(self.end_epoch * steps_per_epoch, total_steps)


def fine_tune_pattern(config: ml_collections.ConfigDict, backbone: str) -> str:
  """`config.trainable` plus the backbone's layers from `fine_tune.unfreeze_from` on (a
  Keras layer name), or else its top `fine_tune.unfreeze_blocks` blocks."""
  if config.fine_tune.unfreeze_from:
    names = transfer.keras_layer_names(backbone)
    top = [f'{name}/' for name in names[names.index(config.fine_tune.unfreeze_from):]]
  else:
    top = transfer.backbone_blocks(backbone)[-config.fine_tune.unfreeze_blocks:]
  return f'(?:{config.trainable})|^backbone/(?:{"|".join(top)})'


def plan(config: ml_collections.ConfigDict, backbone: str | None) -> list[Stage]:
  """The run's stages, in epochs."""
  if config.fine_tune.num_epochs <= 0:
    return [Stage(0, 'train', config.num_epochs, config.trainable, config.trainable,
                  config.learning_rate, config.cache_features)]
  tuned = fine_tune_pattern(config, backbone)
  return [
      Stage(0, 'transfer', config.num_epochs, config.trainable, config.trainable,
            config.learning_rate, config.cache_features),
      Stage(1, 'fine_tune', config.num_epochs + config.fine_tune.num_epochs, tuned,
            tuned if config.fine_tune.batchnorm == 'train' else config.trainable,
            config.fine_tune.learning_rate),  # The backbone trains: no cached features.
  ]


def stage_of_checkpoint(stages: list[Stage], step: int, steps_per_epoch: int,
                        total_steps: int) -> Stage:
  """The stage whose state a checkpoint saved after `step` steps holds.

  A checkpoint at a stage's last step is saved before the next stage begins,
  so it belongs to the stage that ends there.
  """
  for stage in stages:
    if step <= stage.end_step(steps_per_epoch, total_steps):
      return stage
  return stages[-1]
