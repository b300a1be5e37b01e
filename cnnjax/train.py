"""Training and evaluation: `train_and_evaluate(config, workdir, defaults)` runs one experiment.

One straight function: validate the config, prepare the workdir, build the
experiment (`training.setup`), load the data, restore or initialise the
state, train it with the one loop (`training.loop`), evaluate and report.
The hooks below are what a run does around its steps: the collapse guard,
the per-epoch metrics row, checkpoints, signals and the progress bar. A run
is a pure function of its config: batches come from (seed, epoch), dropout
keys from (seed, step).
"""
import math
import time
from typing import Any

import jax
import ml_collections

from cnnjax import config_validation
from cnnjax import sharding
from cnnjax import pretrained
from cnnjax.data import datasets
from cnnjax.data import pipeline
from cnnjax.runs import checkpoints
from cnnjax.runs import lock
from cnnjax.runs import preemption
from cnnjax.runs import report
from cnnjax.runs import workdir as workdir_lib
from cnnjax.runs import writers
from cnnjax.training import diagnostics
from cnnjax.training import features
from cnnjax.training import params as params_lib
from cnnjax.training import setup
from cnnjax.training import stages as stages_lib
from cnnjax.training.loop import Hook
from cnnjax.training.loop import Loop
from cnnjax.training.steps import as_floats

PROGRESS_REFRESH_STEPS = 25  # Steps between updates of the progress bar's running metrics.
# Away from a terminal (log files), an epoch gets a plain progress line at these fractions of
# its steps, once it has run PROGRESS_LINE_SECONDS: long epochs say how they go, short ones don't.
PROGRESS_LINE_FRACTIONS = (0.25, 0.5, 0.75)
PROGRESS_LINE_SECONDS = 20.0


def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return {'num_devices': len(devices), 'num_processes': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': devices[0].device_kind}


class GuardHook(Hook):
  """The collapse guard's checks: losses every few steps and at epoch ends, ReLUs every few
  steps. A collapse warns, or with `stop` (config.stop_on_collapse) stops the run."""

  def __init__(self, guard: diagnostics.CollapseGuard, stop: bool, log: writers.RunWriter):
    self.guard, self.stop, self.log = guard, stop, log

  def after_step(self, loop, images, loss):
    self.guard.record(loop.step, loss)
    if self.guard.due(loop.step):
      self.check_losses(loop)
      stats = loop.trainer.activation_statistics(loop.state, images)
      self._report(self.guard.check_activations(stats, loop.step), loop)

  def epoch_end(self, loop, epoch):
    self.check_losses(loop)

  def check_losses(self, loop: Loop) -> None:
    """Raises at a non-finite loss; reports a collapse. Also runs before every checkpoint."""
    self._report(self.guard.check_losses(), loop)

  def _report(self, symptom: str | None, loop: Loop) -> None:
    if symptom is None:
      return
    message = diagnostics.collapse_message(symptom)
    self.log.announce(f'WARNING: {message}')
    if self.stop:
      loop.request_stop(diagnostics.TrainingCollapsedError(
          f'{message} Stopped at step {loop.step} (config.stop_on_collapse); the state at this '
          'step is saved, so the same command continues the run.'))


class EpochRowHook(Hook):
  """Writes each epoch's metrics.jsonl row: training metrics, validation, seconds."""

  def __init__(self, log: writers.RunWriter, multi_stage: bool):
    self.log, self.multi_stage = log, multi_stage

  def epoch_end(self, loop, epoch):
    row = {'epoch': epoch + 1, 'step': loop.step}
    row.update({f'train_{k}': v for k, v in as_floats(loop.running.compute()).items()})
    if loop.data.val is not None:
      val_metrics, _ = loop.trainer.evaluate(loop.state, loop.data.val)
      row.update({f'val_{k}': v for k, v in val_metrics.items()})
    row['epoch_seconds'] = loop.seconds_since_epoch_start()
    if self.multi_stage:
      row['stage'] = loop.stage.name
    self.log.write_epoch(row)


class CheckpointHook(Hook):
  """Saves at every epoch end, every `every_steps` steps, and before the loop stops.

  The guard checks the losses first: a non-finite loss never reaches a checkpoint.
  """

  def __init__(self, checkpointer: checkpoints.Checkpointer, every_steps: int,
               guard: GuardHook, run_meta: dict[str, Any]):
    self.checkpointer, self.every_steps, self.guard = checkpointer, every_steps, guard
    self.run_meta = run_meta  # What the run started from: weights file, data fingerprints.
    self.saved_step: int | None = None

  def after_step(self, loop, images, loss):
    if (self.every_steps and loop.step % self.every_steps == 0
        and loop.step % loop.steps_per_epoch):  # Epoch ends save in epoch_end.
      self.save(loop)

  def epoch_end(self, loop, epoch):
    self.save(loop)

  def stopping(self, loop):
    if self.saved_step != loop.step:
      self.save(loop)
    self.checkpointer.wait()

  def save(self, loop: Loop) -> None:
    self.guard.check_losses(loop)
    self.checkpointer.save(loop.step, loop.state, loop.running, {
        'train_seconds': loop.train_seconds(), 'epoch_seconds': loop.epoch_seconds(),
        'stage': loop.stage.index, **self.run_meta})
    self.saved_step = loop.step


class SignalHook(Hook):
  """Turns SIGTERM/SIGINT into a stop after the current step (see `preemption`)."""

  def __init__(self, signals: preemption.SignalGuard):
    self.signals = signals

  def after_step(self, loop, images, loss):
    if self.signals.requested:
      loop.request_stop(preemption.StopRequested(self.signals.signum, loop.step))


class ProgressHook(Hook):
  """Within an epoch: a progress bar with the running loss and accuracy on a terminal, a few
  plain lines elsewhere."""

  def __init__(self, log: writers.RunWriter):
    self.log, self.bar = log, None
    self.epoch, self.done, self.steps, self.start, self.marks = 0, 0, 0, 0.0, []

  def epoch_start(self, loop, epoch, steps):
    self.bar = self.log.progress_bar(epoch, steps)
    self.epoch, self.done, self.steps, self.start = epoch, 0, steps, time.perf_counter()
    self.marks = [round(f * steps) for f in PROGRESS_LINE_FRACTIONS]

  def after_step(self, loop, images, loss):
    self.done += 1
    if self.bar is not None:
      self.bar.update(1)
      if self.done % PROGRESS_REFRESH_STEPS == 0:
        self.bar.set_postfix({k: f'{v:.4f}' for k, v in self._metrics(loop).items()})
    elif (self.log.is_writer and self.done in self.marks
          and time.perf_counter() - self.start >= PROGRESS_LINE_SECONDS):
      self.log.progress_line(self.epoch, self.done, self.steps,
                             time.perf_counter() - self.start, self._metrics(loop))

  @staticmethod
  def _metrics(loop: Loop) -> dict[str, float]:
    return as_floats(loop.running.compute())

  def epoch_end(self, loop, epoch):
    self.stopping(loop)

  def stopping(self, loop):
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _check_same_data(restored: checkpoints.Restored, fingerprints: dict[str, str],
                     workdir: str) -> None:
  """Refuses to resume on other examples than the run started with (another data source
  orders them differently, so a validation slice would take other examples)."""
  saved = restored.meta.get('data')
  if saved is None:  # A checkpoint from before fingerprints were recorded.
    return
  differ = [split for split in sorted(set(saved) | set(fingerprints))
            if saved.get(split) != fingerprints.get(split)]
  if differ:
    raise checkpoints.IncompatibleCheckpointError(
        f'The run in {workdir} was trained on other examples than config.local_data_dir / '
        f'config.tfds_data_dir now give (split(s) {", ".join(differ)} differ: other files, or '
        'another source that orders them differently). Nothing was changed. Resume with the '
        'data it started with, or choose a new --workdir.')


def _check_stage(plan: list[stages_lib.Stage], restored: checkpoints.Restored,
                 steps_per_epoch: int, total_steps: int) -> int:
  """The restored state's stage; an error if the config moved a stage boundary past it."""
  expected = stages_lib.stage_of_checkpoint(plan, restored.step, steps_per_epoch,
                                            total_steps).index
  saved = restored.meta.get('stage', 0)
  if saved != expected:
    raise checkpoints.IncompatibleCheckpointError(
        f'The checkpoint at step {restored.step} was saved in training stage {saved}, but this '
        f'config puts that step in stage {expected}: config.num_epochs changed across the '
        'start of fine-tuning. Resume with the config that made the run, or a new --workdir.')
  return saved


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       defaults: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains `config`'s experiment (resuming from `workdir`), evaluates it, writes results.

  `defaults` is configs/default.py's config: the fields a config may have. One run at a time
  holds the workdir (see `runs.lock`).
  """
  config_validation.validate_config(config, defaults)  # Before anything is read or written.
  with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, defaults)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        defaults: ml_collections.ConfigDict) -> dict[str, Any]:
  # --- Check the workdir, build the experiment, read the weights file of a fresh start.
  sharding.sync_processes('before preparing the workdir')
  workdir_lib.prepare(config, workdir, defaults)
  sharding.sync_processes('workdir prepared')
  spec = datasets.dataset_spec(config.dataset)
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))

  def initial_variables() -> tuple[dict[str, Any], dict[str, Any]]:
    """The random initialisation, with the backbone from the weights file if there is one."""
    if not config.pretrained:
      return experiment.variables, {'pretrained': False}
    path = pretrained.weights_path(config.pretrained_path, experiment.backbone,
                                   config.model_kwargs.get('image_size', 96))
    return pretrained.load_into(experiment.variables, config.pretrained_load,
                                experiment.backbone, path)

  # A fresh start reads (or downloads) the weights before the data: a bad file fails at once.
  fresh = None if checkpoints.has_checkpoints(workdir) else initial_variables()

  # --- Data, mesh, steps.
  data = datasets.load_dataset(config.dataset, config.train_split, config.val_split,
                               config.test_split, config.local_data_dir, config.tfds_data_dir)
  data_fingerprints = data.fingerprints()
  mesh = sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  steps_per_epoch = pipeline.steps_per_epoch(len(data.train), config.batch_size)
  total_steps = experiment.total_steps(steps_per_epoch)
  trainers = [experiment.trainer(i, mesh, config.eval_batch_size)
              for i in range(len(experiment.stages))]
  counts = experiment.param_counts()
  devices = f'{jax.device_count()}x {jax.devices()[0].device_kind}'
  log = writers.RunWriter(workdir, math.ceil(total_steps / steps_per_epoch), steps_per_epoch,
                          devices=devices)
  eval_batch = trainers[0].eval_batch_size
  log.announce(
      f'{config.name}: model {config.model}, {counts["params_total"]:,} parameters '
      f'({counts["params_trainable"]:,} trainable), on {devices}. Data {data.name} from '
      f'{data.source}: {len(data.train):,} train, '
      + (f'{len(data.val):,} validation, ' if data.val is not None else '')
      + f'{len(data.test):,} test. {log.num_epochs} epoch(s) of {steps_per_epoch} steps at '
      f'batch {config.batch_size}; evaluation batch {eval_batch}'
      + (f' ({config.eval_batch_size} rounded up to split over {jax.device_count()} devices)'
         if eval_batch != config.eval_batch_size else '')
      + f'. Workdir {workdir}.')

  # --- Restore the latest checkpoint, or start from the initialisation (and the weights file).
  checkpointer = checkpoints.Checkpointer(workdir, config.keep_checkpoints)
  try:
    running = trainers[0].empty_metrics()
    restored = checkpointer.restore_latest(experiment.state_templates(replicated), running)
    timings = {'train_seconds': 0.0, 'epoch_seconds': 0.0}
    saved_results = log.read_results()
    if restored is not None:
      _check_same_data(restored, data_fingerprints, workdir)
      state, running = restored.state, restored.running_metrics
      timings = {k: restored.meta[k] for k in timings}
      pretrained_info = restored.meta.get('pretrained', {'pretrained': False})
      stage_index = _check_stage(list(experiment.stages), restored, steps_per_epoch, total_steps)
      if restored.step >= total_steps and saved_results is not None:
        log.report_finished(saved_results)
        return saved_results
      log.truncate_metrics(restored.step, continues=restored.step < total_steps)
      log.announce(f'Resumed from the checkpoint at step {restored.step} (epoch '
                   f'{restored.step // steps_per_epoch + 1}, step '
                   f'{restored.step % steps_per_epoch}/{steps_per_epoch} of it).')
    else:
      if saved_results is not None:
        raise workdir_lib.WorkdirError(
            f'{workdir} holds the results of a finished run but no readable checkpoint, so it '
            'can be neither resumed nor reported again. Nothing was changed. Pass '
            '--config.resume=False to train afresh (the old run is moved aside), or choose a '
            'new --workdir.')
      dropped = len(writers.read_metrics(workdir))
      if dropped:
        log.truncate_metrics(0, continues=True)
        log.announce(f'{workdir} holds no readable checkpoint: training starts again from step '
                     f'0, and the {dropped} epoch row(s) of the earlier run were dropped from '
                     f'{writers.METRICS_FILE}.')
      variables, pretrained_info = fresh or initial_variables()
      state, stage_index = jax.device_put(experiment.initial_state(variables), replicated), 0
    log.write_config(config.to_dict())

    # --- Train loop, stage by stage.
    inputs = features.FeatureCache(data, trainers[0].eval_batch_size, mesh)
    guard = GuardHook(diagnostics.CollapseGuard(
        len(spec.class_names), config.collapse_guard.every_steps,
        config.collapse_guard.patience_steps, config.collapse_guard.loss_band),
                      config.stop_on_collapse, log)
    with preemption.guard_signals() as signals:
      loop = Loop(state, running, mesh=mesh, batch_size=config.batch_size, seed=config.seed,
                  steps_per_epoch=steps_per_epoch, hooks=[
                      ProgressHook(log), guard, EpochRowHook(log, len(experiment.stages) > 1),
                      CheckpointHook(checkpointer, config.checkpoint_every_steps, guard,
                                     {'pretrained': pretrained_info, 'data': data_fingerprints}),
                      SignalHook(signals)], **timings)
      for stage, trainer in zip(experiment.stages, trainers):
        end_step = stage.end_step(steps_per_epoch, total_steps)
        if loop.step >= end_step:
          continue
        if stage_index != stage.index:
          loop.state = jax.device_put(experiment.begin_stage(loop.state, stage.index), replicated)
          stage_index = stage.index
          log.announce(f'Stage {stage.name} from step {loop.step}: '
                       f'{params_lib.count(loop.state.params)} parameters train, learning '
                       f'rate {stage.learning_rate}.')
        loop.run(trainer, inputs.stage_data(stage.cache_features, trainer.model,
                                            loop.state.variables), end_step, stage)
    train_seconds = loop.train_seconds()
  finally:
    checkpointer.wait()
    checkpointer.close()

  # --- Evaluate on the test split, write results and reports.
  eval_start = time.perf_counter()
  test_split = inputs.stage_data(experiment.stages[-1].cache_features, trainers[-1].model,
                                 loop.state.variables).test
  test_metrics, predictions = trainers[-1].evaluate(loop.state, test_split)
  eval_seconds = time.perf_counter() - eval_start
  step = int(loop.state.step)
  results = {
      'name': config.name, 'model': config.model, 'dataset': data.name,
      'data_source': data.source, 'steps': step, 'epochs': step / steps_per_epoch,
      'test_loss': test_metrics['loss'], 'test_accuracy': test_metrics['accuracy'],
      'eval_seconds': eval_seconds, 'train_seconds': train_seconds,
      **counts, **device_summary(), **pretrained_info,
  }
  if inputs.seconds is not None:
    results['feature_cache_seconds'] = inputs.seconds
  log.write_results(results)
  if log.is_writer:
    confusions = report.write_report(workdir, test_split.labels, predictions, data.class_names,
                                     writers.read_metrics(workdir), config.name)
    log.announce(report.format_confusions(confusions))
  return results
