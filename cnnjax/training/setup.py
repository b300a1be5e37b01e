"""The one setup of a run: everything a config's training is made of, built once.

From the config and the dataset's image shape and class count, `build` makes
the stage plan, the model and the optimizer of each stage, the random
initialisation, and the state templates a checkpoint is restored into.
Training, resuming, `cnnjax.evaluate`, `cnnjax.predict`, `cnnjax.diagnose`
and `experiments/benchmark.py` all start from it; none of them re-derives it.
"""
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnjax import host_memory
from cnnjax import sharding
from cnnjax.data import pipeline
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.errors import ConfigError
from cnnjax.models import build_model
from cnnjax.training import augment
from cnnjax.training import recipes
from cnnjax.training import params as params_lib
from cnnjax.training import stages as stages_lib
from cnnjax.training.steps import TrainState
from cnnjax.training.steps import Trainer

DATA_INIT_EXAMPLES = 5_000   # Training images a data-dependent initialisation looks at.


def epochs_asked(config: ml_collections.ConfigDict) -> int:
  """The epochs of all of `config`'s stages together."""
  return config.num_epochs + config.fine_tune.num_epochs


def steps_asked(num_epochs: int, max_steps: int, steps_per_epoch: int) -> int:
  """The steps a run of `num_epochs` trains, cut at `max_steps` (config.num_train_steps)
  where that is above 0."""
  total = num_epochs * steps_per_epoch
  return min(total, max_steps) if max_steps > 0 else total


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A config's stages, with the model and optimizer of each, and its initial variables."""
  stages: tuple[stages_lib.Stage, ...]
  models: tuple[nn.Module, ...]   # Per stage: which BatchNorms train differs between stages.
  optimizers: tuple[optax.GradientTransformation, ...]  # Their state's shape (see `optimizer`).
  variables: dict[str, Any]       # The random initialisation (Keras' initialisers).
  recipe: recipes.Recipe
  augmentation: augment.Augmentation
  label_smoothing: float
  test_views: augment.TestViews
  dropout_rng: jax.Array
  backbone: str | None            # The pretrained backbone's name, if the model has one.
  num_epochs: int                 # All stages together.
  max_steps: int                  # config.num_train_steps: > 0 cuts the run short.

  @property
  def model(self) -> nn.Module:
    """The model that evaluates and predicts (inference mode ignores which BatchNorms train)."""
    return self.models[-1]

  def total_steps(self, steps_per_epoch: int) -> int:
    """Steps of all stages, cut at `config.num_train_steps`."""
    return steps_asked(self.num_epochs, self.max_steps, steps_per_epoch)

  def initial_state(self, variables: dict[str, Any] | None = None) -> TrainState:
    """The step-0 state of the first stage, from `variables` (default: the random init)."""
    variables = self.variables if variables is None else variables
    trainable, frozen = params_lib.partition(variables['params'], self.stages[0].trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=trainable, frozen_params=frozen,
        batch_stats=variables.get('batch_stats', {}), opt_state=self.optimizers[0].init(trainable),
        rng=self.dropout_rng)

  def init_from_data(self, variables: dict[str, Any], train: Split | StreamedSplit
                     ) -> dict[str, Any]:
    """`variables` with what the model computes from its training images (a whitening
    stem's filters), from the split's first `DATA_INIT_EXAMPLES`: the same on every device
    count and process. Unchanged for models that compute nothing from data."""
    init = getattr(self.model, 'init_from_data', None)
    if init is None:
      return variables
    first = np.arange(min(len(train), DATA_INIT_EXAMPLES))
    images, _, _ = next(pipeline.read_batches(train, [first]))
    return init(variables, np.asarray(pipeline.to_inputs(images)))

  def begin_stage(self, state: TrainState, index: int) -> TrainState:
    """`state` re-split for stage `index`: same weights and statistics, a fresh optimizer."""
    if index == 0:
      return state
    trainable, frozen = params_lib.partition(
        params_lib.merge(state.params, state.frozen_params), self.stages[index].trainable)
    return state.replace(params=trainable, frozen_params=frozen,
                         opt_state=self.optimizers[index].init(trainable))

  def state_templates(self, sharding: jax.sharding.Sharding) -> list[Any]:
    """Per stage, the structure, shapes and placement of its state: what a checkpoint of that
    stage is restored into."""
    def template(index):
      abstract = jax.eval_shape(lambda: self.begin_stage(self.initial_state(), index))
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract)
    return [template(index) for index in range(len(self.stages))]

  def optimizer(self, index: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """Stage `index`'s optimizer, its schedule spread over the stage's steps. Its state has
    the same structure whatever `steps_per_epoch` is: restoring needs only that."""
    stage = self.stages[index]
    first_epoch = self.stages[index - 1].end_epoch if index else 0
    return recipes.create_optimizer(self.recipe, stage.learning_rate,
                                    (stage.end_epoch - first_epoch) * steps_per_epoch,
                                    steps_per_epoch)

  def trainer(self, index: int, mesh: jax.sharding.Mesh, eval_batch_size: int,
              on_features: bool = True, steps_per_epoch: int = 1) -> Trainer:
    """Stage `index`'s jitted steps, its schedule over epochs of `steps_per_epoch` steps
    (training needs it; evaluating does not). A stage with cached features steps its model's
    head on them; `on_features=False` gives steps on images all the same (evaluating a saved
    run, diagnosing, benchmarking)."""
    head = self.stages[index].cache_features and on_features
    return Trainer(self.models[index], self.optimizer(index, steps_per_epoch), mesh,
                   eval_batch_size, 'head' if head else 'all', self.augmentation,
                   self.label_smoothing, self.test_views, self.recipe.feeds_loss)

  def param_counts(self) -> dict[str, int]:
    """Parameters in all (BatchNorm statistics included, as Keras counts) and that train."""
    counts = {'params_total': params_lib.count(self.variables),
              'params_trainable': params_lib.count(
                  params_lib.partition(self.variables['params'], self.stages[0].trainable)[0])}
    if len(self.stages) > 1:
      counts['params_trainable_fine_tune'] = params_lib.count(
          params_lib.partition(self.variables['params'], self.stages[1].trainable)[0])
    return counts


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 batchnorm_trainable: str | None = None) -> nn.Module:
  """The config's model; `batchnorm_trainable` (default `config.trainable`) says which
  BatchNorm layers use batch statistics in training."""
  pattern = config.trainable if batchnorm_trainable is None else batchnorm_trainable
  return build_model(config.model, num_classes, pattern, config.model_kwargs,
                     config.half_precision)


def _blank_images(image_shape: tuple[int, ...]) -> jax.Array:
  return jnp.zeros((1,) + tuple(image_shape), jnp.float32)


def _initialises(model: nn.Module, image_shape: tuple[int, ...]) -> bool:
  """Whether `model` initialises on images of `image_shape` (abstractly: `jax.eval_shape`)."""
  try:
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _blank_images(image_shape),
                                      train=False))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def smallest_image_side(model: nn.Module, image_shape: tuple[int, ...],
                        largest: int = 1024) -> int | None:
  """The smallest square side (up to `largest`) whose images `model` initialises on, where
  those of `image_shape` failed; None if no size does (the failure is not about size).

  Abstract initialisations only (`jax.eval_shape`): a dozen of them cost about one real one.
  """
  return _smallest_that_fits(
      lambda side: _initialises(model, (side, side) + tuple(image_shape[2:])),
      max(image_shape[:2]), largest)


def smallest_resize(config: ml_collections.ConfigDict, num_classes: int,
                    image_shape: tuple[int, ...], largest: int = 1024) -> int | None:
  """For a model that resizes its input itself (`config.model_kwargs.image_size`, where its
  input's size cannot help), the smallest such size it initialises with; None if none does."""
  def fits(side: int) -> bool:
    resized = config.copy_and_resolve_references()
    resized.model_kwargs.image_size = side
    return _initialises(create_model(resized, num_classes), image_shape)
  return _smallest_that_fits(fits, config.model_kwargs.image_size, largest)


def _smallest_that_fits(fits: Callable[[int], bool], low: int, largest: int) -> int | None:
  """The smallest side above `low` (which does not fit), up to `largest`, that `fits`."""
  high = low * 2
  while not fits(high):
    if high >= largest:
      return None
    low, high = high, min(high * 2, largest)
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (low, middle) if fits(middle) else (middle, high)
  return high


def _carried(initialised: dict[str, Any]) -> dict[str, Any]:
  """What a model carries of its `init` output, which also holds the ReLU statistics it was
  free to sow."""
  return {k: v for k, v in initialised.items() if k in ('params', 'batch_stats')}


def _in_binary_units(size: int) -> str:
  return f'{size / 2**30:.1f} GiB' if size >= 2**30 else f'{size / 2**20:.1f} MiB'


def _check_trains_something(pattern: str, variables: Any) -> None:
  """Refuses a `config.trainable` that matches no parameter, before the run says anything."""
  trainable, _ = params_lib.partition(variables['params'], pattern)
  if not jax.tree.leaves(trainable):
    raise ConfigError(f'config.trainable={pattern!r} matches no parameter of the model; '
                      'nothing would train.')


def _check_memory(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                  variables: Any, tx: optax.GradientTransformation) -> None:
  """Refuses a model whose training state cannot fit in the device's free memory, from the
  abstract `variables` (`jax.eval_shape`): a slip in config.image_size can make an MLP's
  first layer billions of weights, and the system would kill the run without a word."""
  trainable, _ = params_lib.partition(variables['params'], config.trainable)
  state = (variables, trainable, jax.eval_shape(tx.init, trainable))  # Gradients beside.
  needed = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
  free = sharding.free_memory_bytes()
  if free is not None and needed > free:
    count = sum(leaf.size for leaf in jax.tree.leaves(variables['params']))
    device = jax.local_devices()[0]  # The one `sharding.free_memory_bytes` counts.
    where = (f'{host_memory.whose()} memory' if device.platform == 'cpu'
             else f'the {device.device_kind}')
    raise ConfigError(
        f'Model {config.model!r} on {"x".join(map(str, image_shape))} images has {count:,} '
        f'parameters: training needs at least {_in_binary_units(needed)} (weights, gradients, '
        f'optimizer state), and {where} has {_in_binary_units(free)} free. Check '
        'config.image_size and config.model_kwargs, or choose a smaller model.')


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, ...], num_classes: int
          ) -> Experiment:
  """The experiment of `config` on images of `image_shape` in `num_classes` classes."""
  for field in ('crop_padding', 'translate_test'):  # Else views (or crops) of padding alone.
    if config.augment[field] >= min(image_shape[:2]):
      raise ConfigError(f'config.augment.{field}={config.augment[field]} shifts '
                        f'{image_shape[0]}x{image_shape[1]} images by their whole size; use '
                        'fewer pixels (1 to 4 suit 32x32 images).')
  first = create_model(config, num_classes)  # The first stage's BatchNorms follow config.trainable.
  backbone = getattr(first, 'backbone', None)
  plan = stages_lib.plan(config, backbone)
  models = (first,) + tuple(create_model(config, num_classes, stage.batchnorm_trainable)
                            for stage in plan[1:])
  recipe = recipes.Recipe.from_config(config)
  txs = tuple(recipes.create_optimizer(recipe, stage.learning_rate, 1) for stage in plan)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  def initialise():
    return models[0].init(init_rng, _blank_images(image_shape), train=False)
  try:
    abstract = jax.eval_shape(initialise)
  except Exception as error:  # pylint: disable=broad-except
    side = smallest_image_side(models[0], image_shape)
    resize = config.model_kwargs.get('image_size')
    if side is None and resize and (needed := smallest_resize(config, num_classes, image_shape)):
      raise ConfigError(
          f'Model {config.model!r} resizes its images to {resize}x{resize} '
          '(config.model_kwargs.image_size), which its layers shrink to nothing: it needs at '
          f'least {needed}x{needed}. Set --config.model_kwargs.image_size={needed} or more.'
      ) from error
    if side is None:
      raise  # Not a matter of size: a bug, with its traceback.
    raise ConfigError(
        f'Model {config.model!r} needs images of at least {side}x{side} pixels; these are '
        f'{image_shape[0]}x{image_shape[1]}, which its layers shrink to nothing. Resize them '
        f'(--config.image_size={side} or more) or choose a model for small images.') from error
  _check_trains_something(plan[0].trainable, _carried(abstract))
  _check_memory(config, image_shape, _carried(abstract), txs[0])
  variables = _carried(initialise())
  return Experiment(tuple(plan), models, txs, variables, recipe,
                    augment.Augmentation(config.augment.crop_padding, config.augment.flip,
                                         config.augment.erasing_prob),
                    config.label_smoothing,
                    augment.TestViews(config.augment.flip_test, config.augment.translate_test),
                    dropout_rng, backbone,
                    epochs_asked(config), config.num_train_steps)
