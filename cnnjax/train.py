"""Training and evaluation: `train_and_evaluate(config, workdir)` runs one experiment.

The state is replicated over a data-parallel mesh and every step is one
`jax.jit` call on a global batch. Frozen parameters are kept apart from the
trainable ones (see `params.py`). Dropout keys derive from (seed, step) and
batches from (seed, epoch), so a run is a pure function of its config.
"""
import functools
import itertools
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

from cnnjax import checkpointing
from cnnjax import compilation
from cnnjax import config_validation
from cnnjax import datasets
from cnnjax import diagnostics
from cnnjax import features
from cnnjax import input_pipeline
from cnnjax import params as params_lib
from cnnjax import preemption
from cnnjax import pretrained
from cnnjax import report
from cnnjax import sharding
from cnnjax import stages
from cnnjax import workdir as workdir_lib
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


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 batchnorm_trainable: str | None = None) -> nn.Module:
  """The config's model; `batchnorm_trainable` (default `config.trainable`) says which
  BatchNorm layers use batch statistics in training."""
  pattern = config.trainable if batchnorm_trainable is None else batchnorm_trainable
  return build_model(config.model, num_classes, pattern, config.model_kwargs,
                     config.half_precision)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: float | None = None) -> optax.GradientTransformation:
  """Adam as Keras configures it (epsilon 1e-7 unless the config says otherwise), after
  `config.warmup_steps` of linear warmup from 0 (none by default, as in the studies)."""
  rate = config.learning_rate if learning_rate is None else learning_rate
  if config.warmup_steps:
    rate = optax.linear_schedule(0.0, rate, config.warmup_steps)
  return optax.adam(rate, eps=config.adam_epsilon)


def init_variables(config: ml_collections.ConfigDict, model: nn.Module,
                   image_shape: tuple[int, ...]) -> dict[str, Any]:
  """The model's random initialisation (Keras' initialisers), from `config.seed`."""
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  return model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)


def state_from_variables(config: ml_collections.ConfigDict, variables: dict[str, Any],
                         trainable_pattern: str, tx: optax.GradientTransformation
                         ) -> TrainState:
  """A step-0 state: `variables` split into trainable and frozen, a fresh optimizer."""
  _, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  trainable, frozen = params_lib.partition(variables['params'], trainable_pattern)
  if not jax.tree.leaves(trainable):
    raise ValueError(f'config.trainable={trainable_pattern!r} matches no parameter of '
                     f'model {config.model!r}; nothing would train.')
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=trainable, frozen_params=frozen,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(trainable),
      rng=dropout_rng)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       image_shape: tuple[int, ...], tx: optax.GradientTransformation
                       ) -> TrainState:
  """The first stage's state from a random initialisation."""
  return state_from_variables(config, init_variables(config, model, image_shape),
                              config.trainable, tx)


def begin_stage(state: TrainState, trainable_pattern: str, tx: optax.GradientTransformation
                ) -> TrainState:
  """`state` re-split for a new stage: same weights and statistics, a fresh optimizer."""
  trainable, frozen = params_lib.partition(
      params_lib.merge(state.params, state.frozen_params), trainable_pattern)
  return state.replace(params=trainable, frozen_params=frozen, opt_state=tx.init(trainable))


def _model_inputs(images: jax.Array, part: str) -> tuple[jax.Array, dict[str, str]]:
  """What the model gets: [0, 1] pixels, or cached backbone features for its head."""
  if part == 'all':
    return input_pipeline.to_inputs(images), {}
  return images, {'part': part}


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, running: Metrics,
               *, model: nn.Module, tx: optax.GradientTransformation, part: str = 'all'
               ) -> tuple[TrainState, Metrics, jax.Array]:
  """One Adam step on a global batch; folds the batch's metrics into `running`.

  Returns the new state, the running metrics and the batch's mean loss (for the
  collapse guard). `part='head'`: `images` are cached backbone features.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  inputs, part_kwargs = _model_inputs(images, part)

  def loss_fn(trainable):
    variables = {'params': params_lib.merge(trainable, state.frozen_params)}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    logits, updates = model.apply(variables, inputs, train=True, rngs={'dropout': dropout_rng},
                                  mutable=['batch_stats'], **part_kwargs)
    logits = logits.astype(jnp.float32)  # Loss and metrics in float32 under half precision.
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), (loss, logits, updates.get('batch_stats', {}))

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)
  batch_metrics = Metrics.single_from_model_output(loss=loss, logits=logits, labels=labels)
  return new_state, running.merge(batch_metrics), loss.mean()


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
              *, model: nn.Module, part: str = 'all') -> tuple[Metrics, jax.Array]:
  """Metrics of a (padded) batch, counting only `mask`ed examples, and predictions."""
  inputs, part_kwargs = _model_inputs(images, part)
  logits = model.apply(state.variables, inputs, train=False, **part_kwargs).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  batch_metrics = Metrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, mask=mask)
  return batch_metrics, jnp.argmax(logits, -1)


def activation_statistics(state: TrainState, images: jax.Array, *, model: nn.Module,
                          part: str = 'all') -> dict[str, dict[str, jax.Array]]:
  """Every ReLU layer's output statistics on a batch (see `diagnostics`)."""
  inputs, part_kwargs = _model_inputs(images, part)
  return diagnostics.activation_statistics(model, state.variables, inputs, **part_kwargs)


class Trainer:
  """Holds the jitted steps of one training stage, compiled for one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module,
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, part: str = 'all'):
    self.config, self.model, self.tx, self.mesh, self.part = config, model, tx, mesh, part
    replicated = sharding.replicated(mesh)
    self.train_step = compilation.jit(
        functools.partial(train_step, model=model, tx=tx, part=part),
        out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 3))
    self.activation_statistics = compilation.jit(
        functools.partial(activation_statistics, model=model, part=part),
        out_shardings=replicated)
    # Predictions come back replicated: every process can read all of them.
    self.eval_step = compilation.jit(functools.partial(eval_step, model=model, part=part),
                                     out_shardings=(replicated, replicated))

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
  """Steps of all stages (transfer and fine-tuning), cut at `config.num_train_steps`."""
  total = (config.num_epochs + config.fine_tune.num_epochs) * steps_per_epoch
  return min(total, config.num_train_steps) if config.num_train_steps > 0 else total


def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return {'num_devices': len(devices), 'num_processes': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': devices[0].device_kind}


def _stage_templates(plan: list[stages.Stage], txs: list[optax.GradientTransformation],
                     initial: TrainState, replicated: jax.sharding.Sharding):
  """state_template(stage) for `Checkpointer.restore_latest`: that stage's state structure."""
  def template(stage: int) -> TrainState:
    if not 0 <= stage < len(plan):
      raise checkpointing.IncompatibleCheckpointError(
          f'A checkpoint was saved in training stage {stage}; this config has {len(plan)}.')
    state = initial if stage == 0 else begin_stage(initial, plan[stage].trainable, txs[stage])
    return jax.device_put(state, replicated)
  return template


def restore_latest_state(config: ml_collections.ConfigDict, workdir: str
                         ) -> checkpointing.Restored:
  """The latest checkpoint of the run of `config` in `workdir`, on this process's devices."""
  if not checkpointing.has_checkpoints(workdir):
    raise checkpointing.IncompatibleCheckpointError(
        f'{workdir} holds no checkpoint: train it first (python -m cnnjax.main '
        f'--config=... --workdir={workdir}).')
  spec = datasets.DATASETS[config.dataset]
  model = create_model(config, len(spec.class_names))
  plan = stages.plan(config, getattr(model, 'backbone', None), 1, num_train_steps(config, 1))
  txs = [create_optimizer(config, stage.learning_rate) for stage in plan]
  initial = state_from_variables(config, init_variables(config, model, spec.image_shape),
                                 plan[0].trainable, txs[0])
  replicated = sharding.replicated(sharding.create_mesh())
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(
        _stage_templates(plan, txs, initial, replicated),
        jax.device_put(Metrics.empty(), replicated))
  finally:
    checkpointer.close()
  if restored is None:
    raise checkpointing.IncompatibleCheckpointError(f'{workdir} holds no readable checkpoint.')
  return restored


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config`'s experiment (resuming from `workdir`), evaluates it, writes results."""
  config_validation.validate_config(config)  # Before any data is read or step compiled.
  sharding.sync_processes('before preparing the workdir')
  workdir_lib.prepare(config, workdir)
  sharding.sync_processes('workdir prepared')
  backbone = getattr(create_model(config, len(datasets.DATASETS[config.dataset].class_names)),
                     'backbone', None)
  weights = None
  if config.pretrained and not checkpointing.has_checkpoints(workdir):
    # A fresh start: find (or download) the weights before reading data or writing anything.
    weights = pretrained.weights_path(config, backbone)
  data = datasets.load_dataset(config.dataset, config.train_split, config.val_split,
                               config.test_split, config.local_data_dir, config.tfds_data_dir)
  mesh = sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(data.train), config.batch_size)
  total_steps = num_train_steps(config, steps_per_epoch)
  model = create_model(config, data.num_classes)
  plan = stages.plan(config, backbone, steps_per_epoch, total_steps)
  trainers = [Trainer(config, create_model(config, data.num_classes, stage.batchnorm_trainable),
                      create_optimizer(config, stage.learning_rate), mesh,
                      'head' if stage.cache_features else 'all') for stage in plan]
  variables = init_variables(config, model, data.image_shape)
  initial = state_from_variables(config, variables, plan[0].trainable, trainers[0].tx)
  running = jax.device_put(Metrics.empty(), replicated)
  counts = {'params_total': params_lib.count(initial.variables),
            'params_trainable': params_lib.count(initial.params)}
  if len(plan) > 1:
    counts['params_trainable_fine_tune'] = params_lib.count(
        params_lib.partition(variables['params'], plan[1].trainable)[0])
  logging.info('Model %s: %s. %s', config.model, counts, device_summary())

  log = writers.RunWriter(workdir, math.ceil(total_steps / steps_per_epoch), steps_per_epoch,
                          devices=f'{jax.device_count()}x {jax.devices()[0].device_kind}')
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  timings = {'train_seconds': 0.0, 'epoch_seconds': 0.0}
  try:
    restored = checkpointer.restore_latest(
        _stage_templates(plan, [t.tx for t in trainers], initial, replicated), running)
    if restored is not None:
      state, running = restored.state, restored.running_metrics
      timings = {k: restored.meta[k] for k in timings}
      pretrained_info = restored.meta.get('pretrained', {'pretrained': False})
      state_stage = _check_stage(plan, restored)
      saved_results = log.read_results()
      if restored.step >= total_steps and saved_results is not None:
        log.report_finished(saved_results)
        return saved_results
      log.truncate_metrics(restored.step, continues=restored.step < total_steps)
      log.announce(f'Resumed from the checkpoint at step {restored.step} (epoch '
                   f'{restored.step // steps_per_epoch + 1}, step '
                   f'{restored.step % steps_per_epoch}/{steps_per_epoch} of it).')
    else:
      pretrained_info = {'pretrained': False}
      if config.pretrained:  # Only a fresh start reads the weights file.
        variables, pretrained_info = pretrained.load_into(
            variables, config, backbone, weights or pretrained.weights_path(config, backbone))
        initial = state_from_variables(config, variables, plan[0].trainable, trainers[0].tx)
      state, state_stage = jax.device_put(initial, replicated), 0
    log.write_config(config)
    fit = _Fit(config, plan, trainers, data, mesh, log, checkpointer, steps_per_epoch,
               total_steps, pretrained_info)
    state = fit.run(state, running, timings, state_stage)
  finally:
    checkpointer.wait()
    checkpointer.close()

  eval_start = time.perf_counter()
  test_split = fit.stage_data(plan[-1], state).test
  test_metrics, predictions = trainers[-1].evaluate(state, test_split)
  eval_seconds = time.perf_counter() - eval_start
  step = int(state.step)
  results = {
      'name': config.name, 'model': config.model, 'dataset': data.name,
      'data_source': data.source, 'steps': step, 'epochs': step / steps_per_epoch,
      'test_loss': test_metrics['loss'], 'test_accuracy': test_metrics['accuracy'],
      'eval_seconds': eval_seconds, 'train_seconds': fit.train_seconds,
      **counts, **device_summary(), **pretrained_info,
  }
  if fit.feature_cache_seconds is not None:
    results['feature_cache_seconds'] = fit.feature_cache_seconds
  log.write_results(results)
  if log.is_writer:
    confusions = report.write_report(workdir, test_split.labels, predictions, data.class_names,
                                     writers.read_metrics(workdir), config.name)
    log.announce(report.format_confusions(confusions))
  return results


def _check_stage(plan: list[stages.Stage], restored: checkpointing.Restored) -> int:
  """The restored state's stage; an error if the config moved a stage boundary past it."""
  expected = stages.stage_of_checkpoint(plan, restored.step).index
  saved = restored.meta.get('stage', 0)
  if saved != expected:
    raise checkpointing.IncompatibleCheckpointError(
        f'The checkpoint at step {restored.step} was saved in training stage {saved}, but this '
        f'config puts that step in stage {expected}: config.num_epochs changed across the '
        'start of fine-tuning. Resume with the config that made the run, or a new --workdir.')
  return saved


class _Fit:
  """The epoch loop: steps, per-epoch metrics and validation, checkpoints, signals.

  Wall-clock totals survive a resume: a checkpoint records the seconds spent
  so far in training and in the current epoch, and the clocks restart from them.
  """

  def __init__(self, config, plan, trainers, data, mesh, log, checkpointer, steps_per_epoch,
               total_steps, pretrained_info):
    self.config, self.plan, self.trainers, self.data, self.mesh = (
        config, plan, trainers, data, mesh)
    self.log, self.checkpointer = log, checkpointer
    self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
    self.pretrained_info = pretrained_info
    self.guard = diagnostics.CollapseGuard(config, data.num_classes, log.announce)
    self._features = None
    self.feature_cache_seconds = None  # Time spent computing cached features, if any.

  def stage_data(self, stage: stages.Stage, state: TrainState) -> datasets.Dataset:
    """What `stage` trains on: the images, or its frozen backbone's cached features."""
    if not stage.cache_features:
      return self.data
    if self._features is None:  # Once per run: the backbone is frozen while caching applies.
      start = time.perf_counter()
      self._features = features.extract_dataset(
          self.trainers[stage.index].model, state.variables, self.data,
          self.config.eval_batch_size, self.mesh)
      self.feature_cache_seconds = time.perf_counter() - start
    return self._features
    self._train_start = self._epoch_start = time.perf_counter()
    self.train_seconds = 0.0  # Set when the loop ends; excludes the final test evaluation.

  def _training_seconds(self) -> float:
    return time.perf_counter() - self._train_start

  def _save(self, step: int, state: TrainState, running: Metrics, stage: stages.Stage) -> None:
    self.guard.check_losses()  # A non-finite loss never reaches a checkpoint.
    epoch_seconds = time.perf_counter() - self._epoch_start
    self.checkpointer.save(step, state, running, {
        'train_seconds': self._training_seconds(),
        'epoch_seconds': epoch_seconds if step % self.steps_per_epoch else 0.0,
        'stage': stage.index, 'pretrained': self.pretrained_info})

  def run(self, state: TrainState, running: Metrics, timings: dict[str, float],
          state_stage: int) -> TrainState:
    now = time.perf_counter()
    self._train_start = now - timings['train_seconds']
    self._epoch_start = now - timings['epoch_seconds']
    step = int(state.step)
    with preemption.guard_signals() as guard:
      for stage, trainer in zip(self.plan, self.trainers):
        if step >= stage.end_step:
          continue
        if state_stage != stage.index:
          state = jax.device_put(begin_stage(state, stage.trainable, trainer.tx),
                                 sharding.replicated(self.mesh))
          state_stage = stage.index
          self.log.announce(f'Stage {stage.name} from step {step}: '
                            f'{params_lib.count(state.params)} parameters train, '
                            f'learning rate {stage.learning_rate}.')
        state, running, step = self._run_stage(stage, trainer, state, running, step, guard)
    self.train_seconds = self._training_seconds()
    return state

  def _run_stage(self, stage, trainer, state, running, step, guard):
    config, spe = self.config, self.steps_per_epoch
    data = self.stage_data(stage, state)
    while step < stage.end_step:
      epoch = step // spe
      epoch_end_step = min((epoch + 1) * spe, stage.end_step)
      batches = input_pipeline.train_batches(data.train, config.batch_size, config.seed,
                                             epoch, first_step=step - epoch * spe)
      with self.log.progress(epoch, epoch_end_step - step) as progress:
        for batch in itertools.islice(batches, epoch_end_step - step):
          images, labels = sharding.put_global_batch(self.mesh, batch)
          state, running, loss = trainer.train_step(state, images, labels, running)
          step += 1
          progress.update(running)
          self.guard.record(step, loss)
          if self.guard.due(step):
            self._check_health(trainer, state, running, images, step, stage)
          if guard.requested:
            self._save(step, state, running, stage)
            self.checkpointer.wait()
            raise preemption.StopRequested(guard.signum, step)
          if (config.checkpoint_every_steps and step < epoch_end_step
              and step % config.checkpoint_every_steps == 0):
            self._save(step, state, running, stage)
      self.guard.check_losses()
      row = self._epoch_row(epoch, step, state, running, trainer, data)
      if len(self.plan) > 1:
        row['stage'] = stage.name
      self.log.write_epoch(row)
      if step % spe == 0:  # A run cut short mid-epoch keeps its running metrics to resume.
        running = jax.device_put(Metrics.empty(), sharding.replicated(self.mesh))
      self._save(step, state, running, stage)
      self._epoch_start = time.perf_counter()
    return state, running, step

  def _check_health(self, trainer, state, running, images, step, stage) -> None:
    """The guard's periodic check: losses so far, ReLUs on this batch. A collapse that stops
    the run (config.stop_on_collapse) saves this step first, so it can be resumed."""
    try:
      self.guard.check_losses()
      self.guard.check_activations(trainer.activation_statistics(state, images), step)
    except diagnostics.TrainingCollapsedError:
      self._save(step, state, running, stage)
      self.checkpointer.wait()
      raise

  def _epoch_row(self, epoch: int, step: int, state: TrainState, running: Metrics,
                 trainer: Trainer, data: datasets.Dataset) -> dict[str, Any]:
    """The epoch's metrics.jsonl row (its losses were checked by the guard)."""
    row = {'epoch': epoch + 1, 'step': step}
    row.update({f'train_{k}': v for k, v in _as_floats(running.compute()).items()})
    if data.val is not None:
      val_metrics, _ = trainer.evaluate(state, data.val)
      row.update({f'val_{k}': v for k, v in val_metrics.items()})
    row['epoch_seconds'] = time.perf_counter() - self._epoch_start
    return row
