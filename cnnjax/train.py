"""Training and evaluation: `train_and_evaluate(config, workdir)` runs one experiment.

The state is replicated over a data-parallel mesh and every step is one
`jax.jit` call on a global batch. Frozen parameters are kept apart from the
trainable ones (see `params.py`). Dropout keys derive from (seed, step) and
batches from (seed, epoch), so a run is a pure function of its config.
"""
import functools
import json
import logging
import math
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics

from cnnjax import datasets
from cnnjax import input_pipeline
from cnnjax import params as params_lib
from cnnjax import sharding
from cnnjax import writers
from cnnjax.models import build_model


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, so it jits and checkpoints."""
  step: jax.Array
  params: Any          # Trainable parameters: the optimizer's subtree.
  frozen_params: Any   # Parameters `config.trainable` does not match.
  batch_stats: Any     # BatchNorm moving statistics ({} for models without).
  opt_state: Any
  rng: jax.Array       # Base key; step keys are fold_in(rng, step).

  @property
  def variables(self) -> dict[str, Any]:
    variables = {'params': params_lib.merge(self.params, self.frozen_params)}
    if self.batch_stats:
      variables['batch_stats'] = self.batch_stats
    return variables


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return build_model(config.model, num_classes, config.trainable, config.model_kwargs)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam as Keras configures it (epsilon 1e-7 unless the config says otherwise)."""
  return optax.adam(config.learning_rate, eps=config.adam_epsilon)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       image_shape: tuple[int, ...], tx: optax.GradientTransformation
                       ) -> TrainState:
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                         train=False)
  trainable, frozen = params_lib.partition(variables['params'], config.trainable)
  if not jax.tree.leaves(trainable):
    raise ValueError(f'config.trainable={config.trainable!r} matches no parameter of '
                     f'model {config.model!r}; nothing would train.')
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=trainable, frozen_params=frozen,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(trainable),
      rng=dropout_rng)


def to_inputs(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1], as the studies fed them. Runs on device."""
  return images.astype(jnp.float32) / 255.0


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, running: Metrics,
               *, model: nn.Module, tx: optax.GradientTransformation
               ) -> tuple[TrainState, Metrics]:
  """One Adam step on a global batch; folds the batch's metrics into `running`."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  inputs = to_inputs(images)

  def loss_fn(trainable):
    variables = {'params': params_lib.merge(trainable, state.frozen_params)}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    logits, updates = model.apply(variables, inputs, train=True,
                                  rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), (loss, logits, updates.get('batch_stats', {}))

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)
  batch_metrics = Metrics.single_from_model_output(loss=loss, logits=logits, labels=labels)
  return new_state, running.merge(batch_metrics)


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
              *, model: nn.Module) -> tuple[Metrics, jax.Array]:
  """Metrics of a (padded) batch, counting only `mask`ed examples, and predictions."""
  logits = model.apply(state.variables, to_inputs(images), train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  batch_metrics = Metrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, mask=mask)
  return batch_metrics, jnp.argmax(logits, -1)


class Trainer:
  """Holds the jitted steps of one run, compiled for one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module,
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    replicated = sharding.replicated(mesh)
    self.train_step = jax.jit(functools.partial(train_step, model=model, tx=tx),
                              out_shardings=(replicated, replicated), donate_argnums=(0, 3))
    self.eval_step = jax.jit(functools.partial(eval_step, model=model),
                             out_shardings=(replicated, sharding.batch_sharded(mesh)))

  def evaluate(self, state: TrainState, split: datasets.Split
               ) -> tuple[dict[str, float], np.ndarray]:
    """Loss/accuracy over every example of `split` once, and the predicted classes."""
    total = Metrics.empty()
    predictions = []
    for batch in input_pipeline.eval_batches(split, self.config.eval_batch_size):
      batch_metrics, predicted = self.eval_step(
          state, *sharding.put_global_batch(self.mesh, batch))
      total = total.merge(batch_metrics)
      predictions.append(predicted)
    predicted = np.concatenate([np.asarray(jax.device_get(p)) for p in predictions])
    return _as_floats(total.compute()), predicted[:len(split)]


def _as_floats(computed: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in computed.items()}


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  total = config.num_epochs * steps_per_epoch
  return min(total, config.num_train_steps) if config.num_train_steps > 0 else total


def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return {'num_devices': len(devices), 'num_processes': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': devices[0].device_kind}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config`'s experiment, evaluates it and writes its results to `workdir`."""
  sharding.check_batch_size(config.batch_size)
  sharding.check_batch_size(config.eval_batch_size, 'config.eval_batch_size')
  data = datasets.load_dataset(config.dataset, config.train_split, config.val_split,
                               config.test_split, config.local_data_dir, config.tfds_data_dir)
  mesh = sharding.create_mesh()
  model = create_model(config, data.num_classes)
  tx = create_optimizer(config)
  state = jax.device_put(create_train_state(config, model, data.image_shape, tx),
                         sharding.replicated(mesh))
  trainer = Trainer(config, model, tx, mesh)
  pretrained = _describe_pretrained(config)
  counts = {'params_total': params_lib.count(state.variables),
            'params_trainable': params_lib.count(state.params)}
  logging.info('Model %s: %d parameters, %d trainable. %s', config.model,
               counts['params_total'], counts['params_trainable'], device_summary())

  steps_per_epoch = input_pipeline.steps_per_epoch(len(data.train), config.batch_size)
  total_steps = num_train_steps(config, steps_per_epoch)
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  log = writers.RunWriter(workdir, num_epochs, steps_per_epoch)
  log.write_config(config)

  train_start = time.perf_counter()
  step = int(state.step)
  while step < total_steps:
    epoch = step // steps_per_epoch
    epoch_start = time.perf_counter()
    epoch_end_step = min((epoch + 1) * steps_per_epoch, total_steps)
    running = jax.device_put(Metrics.empty(), sharding.replicated(mesh))
    batches = input_pipeline.train_batches(data.train, config.batch_size, config.seed, epoch,
                                           first_step=step - epoch * steps_per_epoch)
    with log.progress(epoch, epoch_end_step - step) as progress:
      for images, labels in batches:
        if step >= epoch_end_step:
          break
        state, running = trainer.train_step(
            state, *sharding.put_global_batch(mesh, (images, labels)), running)
        step += 1
        progress.update(running)
    row = {'epoch': epoch + 1, 'step': step}
    row.update({f'train_{k}': v for k, v in _as_floats(running.compute()).items()})
    if not math.isfinite(row['train_loss']):
      raise NonFiniteLossError(
          f'Training loss became {row["train_loss"]} by step {step} (epoch {epoch + 1}). '
          'Lower config.learning_rate or check the inputs; the run was stopped.')
    if data.val is not None:
      val_metrics, _ = trainer.evaluate(state, data.val)
      row.update({f'val_{k}': v for k, v in val_metrics.items()})
    row['epoch_seconds'] = time.perf_counter() - epoch_start
    log.write_epoch(row)
  train_seconds = time.perf_counter() - train_start

  eval_start = time.perf_counter()
  test_metrics, predictions = trainer.evaluate(state, data.test)
  jax.block_until_ready(predictions)
  eval_seconds = time.perf_counter() - eval_start
  results = {
      'name': config.name, 'model': config.model, 'dataset': data.name,
      'data_source': data.source, 'steps': step, 'epochs': step / steps_per_epoch,
      'test_loss': test_metrics['loss'], 'test_accuracy': test_metrics['accuracy'],
      'eval_seconds': eval_seconds, 'train_seconds': train_seconds,
      **counts, **device_summary(), **pretrained,
  }
  log.write_results(results)
  return results


def _describe_pretrained(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the run starts from. Loading ImageNet weights is not built yet: say so loudly."""
  if not config.pretrained:
    return {'pretrained': False}
  logging.warning(
      '*** config.pretrained=%r asks for ImageNet weights, but cnnjax cannot load them yet: '
      'the backbone starts from RANDOM weights and stays frozen. Results will not match the '
      "study's transfer learning. ***", config.pretrained)
  return {'pretrained': False, 'pretrained_requested': config.pretrained}
