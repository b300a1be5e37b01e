"""Training and evaluation: `train_and_evaluate(config, workdir, defaults)` runs one experiment.

One straight function: validate the config, prepare the workdir, build the
experiment (`training.setup`), load the data, restore or initialise the
state, train it with the one loop (`training.loop`), evaluate and report.
What a run does around its steps (the collapse guard, the per-epoch metrics
row, checkpoints, signals, the progress bar) are the hooks of `runs.hooks`.
A run is a pure function of its config: batches come from (seed, epoch),
dropout keys from (seed, step).
"""
import functools
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections

from cnnjax import config_validation
from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import examples
from cnnjax.data import pipeline
from cnnjax.pretrained import weights as pretrained_weights
from cnnjax.runs import checkpoints
from cnnjax.runs import exit_at_once
from cnnjax.runs import hooks
from cnnjax.runs import lock
from cnnjax.runs import preemption
from cnnjax.runs import report
from cnnjax.runs import selection as selection_lib
from cnnjax.runs import workdir as workdir_lib
from cnnjax.runs import writers
from cnnjax.training import diagnostics
from cnnjax.training import dispatch
from cnnjax.training import features
from cnnjax.training import params as params_lib
from cnnjax.training import setup
from cnnjax.training import stages as stages_lib
from cnnjax.training.loop import Loop

def device_summary() -> dict[str, Any]:
  devices = jax.devices()
  return {'num_devices': len(devices), 'num_processes': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': devices[0].device_kind}


def trained_longer_than_asked(config: ml_collections.ConfigDict, results: dict[str, Any]
                              ) -> str | None:
  """Why `results` (a finished run's, as `train_and_evaluate` returned them) are not those of
  the run `config` asks for, or None where they are: a run that trained further in the same
  workdir reports its own, longer run (and says so). A script that compares runs must not
  take them for the config's, nor set them beside runs of the length asked."""
  steps_per_epoch = round(results['steps'] / results['epochs']) if results['epochs'] else 0
  asked = setup.steps_asked(setup.epochs_asked(config), config.num_train_steps, steps_per_epoch)
  if results['steps'] <= asked:
    return None
  return (f'its workdir holds a finished run of {results["steps"]} steps ({results["epochs"]:g} '
          f'epochs), more than the {asked} asked for, and reports that run')


def _how_splits_differ(splits: list[str], saved: dict[str, str],
                       now: dict[str, str]) -> str:
  """Each split's number of examples then and now where it changed: an image skipped as
  unreadable when the run started and mended since is one more, which a user would not
  guess from 'other examples' alone."""
  counts, grown_tree = [], False
  for split in splits:
    then, today = (examples.example_count(f[split]) if split in f else None
                   for f in (saved, now))
    if then is not None and today is not None and then != today:
      counts.append(f'{split} holds {today:,} examples now, {then:,} when the run started')
      grown_tree |= today > then and saved[split].startswith('names:')
  if not counts:
    return 'other files, or another source that orders them differently'
  return '; '.join(counts + ['an image skipped as unreadable then and readable now counts as '
                             'one more'] * grown_tree)


def _check_same_data(restored: checkpoints.Restored, fingerprints: dict[str, str],
                     workdir: str) -> None:
  """Refuses to resume on other training or validation examples than the run started with
  (another data source orders them differently, so a validation slice would take other
  examples). The test split is read only once training is over: another one (a broken test
  image that stopped the run, removed) is warned of, and the run is tested on it."""
  saved = restored.meta.get('data')
  if saved is None:  # A checkpoint from before fingerprints were recorded.
    return
  differ = [split for split in sorted(set(saved) | set(fingerprints))
            if split not in saved or split not in fingerprints
            or not examples.same_examples(saved[split], fingerprints[split])]
  trained_on = [split for split in differ if split != 'test']
  if trained_on:
    raise checkpoints.IncompatibleCheckpointError(
        f'The run in {workdir} was trained on other examples than config.local_data_dir / '
        f'config.tfds_data_dir now give (split(s) {", ".join(trained_on)} differ: '
        f'{_how_splits_differ(trained_on, saved, fingerprints)}). Nothing was changed. '
        'Resume with the data it started with, or choose a new --workdir (or pass '
        '--config.resume=False: the run starts again, the old one moved aside).')
  if differ:
    logging.warning('The test split holds other examples than when the run in %s started '
                    '(files added, removed or renamed): the run is tested on those it holds '
                    'now.', workdir)


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
  workdir_lib.check_writable(workdir, config.name)  # Before the lock file is made beside it.
  with lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    with preemption.guard_signals() as signals:
      return _train_and_evaluate(config, workdir, defaults, signals)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        defaults: ml_collections.ConfigDict,
                        signals: preemption.SignalGuard) -> dict[str, Any]:
  # --- Describe the data, check the workdir, build the experiment, read the weights file.
  signals.note = preemption.BEFORE_TRAINING
  signals.stop_if_requested(exit_at_once.NOTHING_STARTED)
  data_options = datasets.DataOptions.from_config(config)
  spec = datasets.describe(data_options)  # An unknown dataset or a bad tree: nothing written.
  sharding.sync_processes('before preparing the workdir')
  resumed_config = workdir_lib.prepare(config, workdir, defaults)
  sharding.sync_processes('workdir prepared')
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))

  def initial_variables() -> tuple[dict[str, Any], dict[str, Any]]:
    """The random initialisation, with the backbone from the weights file if there is one."""
    if not config.pretrained:
      return experiment.variables, {'pretrained': False}
    path = pretrained_weights.weights_path(config.pretrained_path, experiment.backbone,
                                           config.model_kwargs.get('image_size', 96))
    return pretrained_weights.load_into(experiment.variables, config.pretrained_load,
                                        experiment.backbone, path)

  # A fresh start reads (or downloads) the weights before the data: a bad file fails at once.
  fresh = None if checkpoints.has_checkpoints(workdir) else initial_variables()

  # --- Data, mesh, steps.
  data = datasets.load_dataset(data_options, spec)
  data_fingerprints = data.fingerprints()
  mesh = sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  steps_per_epoch = pipeline.steps_per_epoch(len(data.train), config.batch_size)
  total_steps = experiment.total_steps(steps_per_epoch)
  trainers = [experiment.trainer(i, mesh, config.eval_batch_size,
                                 steps_per_epoch=steps_per_epoch)
              for i in range(len(experiment.stages))]
  counts = experiment.param_counts()
  devices = f'{jax.device_count()}x {jax.devices()[0].device_kind}'
  steps_per_call = dispatch.steps_per_dispatch(config.steps_per_dispatch, jax.default_backend())
  on_device = dispatch.data_on_device(config.data_on_device, data.train, jax.default_backend())
  log = writers.RunWriter(workdir, math.ceil(total_steps / steps_per_epoch), steps_per_epoch,
                          devices=devices)
  eval_batch = trainers[0].eval_batch_size
  log.announce(
      f'{config.name}: model {config.model}, {counts["params_total"]:,} parameters '
      f'({counts["params_trainable"]:,} trainable), on {devices}. Data {data.name} '
      f'({len(spec.class_names)} classes, {"x".join(map(str, spec.image_shape))}) from '
      f'{data.source}'
      + (f', streamed by {data_options.workers} thread(s)' if data.streamed else '')
      + f': {len(data.train):,} train, '
      + (f'{len(data.val):,} validation, ' if data.val is not None else '')
      + f'{len(data.test):,} test'
      + (', training split held on the device' if on_device else '')
      + f'. {log.num_epochs} epoch(s) of {steps_per_epoch} steps at batch {config.batch_size}'
      + (f', stopping at step {total_steps} (config.num_train_steps)'
         if total_steps < experiment.num_epochs * steps_per_epoch else '')
      + (f', {steps_per_call} per call' if steps_per_call > 1 else '')
      + f'; evaluation batch {eval_batch}'
      + (f' ({config.eval_batch_size} rounded up to split over {jax.device_count()} devices)'
         if eval_batch != config.eval_batch_size else '')
      + f'. Workdir {workdir}.')

  # --- Restore the latest checkpoint, or start from the initialisation (and the weights file).
  checkpointer = checkpoints.Checkpointer(workdir, config.keep_checkpoints, owns_workdir=True)
  selection = selection_lib.Selection.from_config(config)
  best = (checkpoints.BestWeights(workdir, owns_workdir=True) if selection.keeps_best_weights
          else None)
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
      done = (restored.step >= total_steps
              or selection_lib.progress_at(selection, workdir, restored.step).stopped)
      if done and saved_results is not None and saved_results.get('steps') == restored.step:
        log.report_finished(saved_results, total_steps)
        return saved_results
      if saved_results is not None:  # A shorter run's, trained on (or on to its end) since.
        kept_at = log.move_aside(writers.RESULTS_FILE)
        log.announce(f'{writers.RESULTS_FILE} held the results of the run at step '
                     f'{saved_results.get("steps")}; the run goes on from its checkpoint at '
                     f'step {restored.step}, so they were moved to {os.path.basename(kept_at)}.')
      if not done:
        workdir_lib.warn_of_a_bent_schedule(resumed_config, config)
      log.truncate_metrics(restored.step, continues=not done)
      log.announce(f'Training had finished (step {restored.step}), its results were not all '
                   'written: evaluating again.' if done else
                   f'Resumed from the checkpoint at step {restored.step} (epoch '
                   f'{restored.step // steps_per_epoch + 1}, step '
                   f'{restored.step % steps_per_epoch}/{steps_per_epoch} of it).')
    else:
      if saved_results is not None:
        raise workdir_lib.WorkdirError(
            f'{workdir} holds the results of a finished run but no readable checkpoint, so it '
            'can be neither resumed nor reported again. Its results were left as they are. Pass '
            '--config.resume=False to train afresh (the old run is moved aside), or choose a '
            'new --workdir.')
      earlier = len(writers.read_metrics(workdir))
      if earlier:  # Kept, not dropped: the record of training that did take place.
        kept_at = log.move_aside(writers.METRICS_FILE)
        log.announce(f'{workdir} holds no readable checkpoint: training starts again from step '
                     f'0, and the {earlier} epoch row(s) of the earlier run were moved from '
                     f'{writers.METRICS_FILE} to {os.path.basename(kept_at)}.')
      variables, pretrained_info = fresh or initial_variables()
      variables = experiment.init_from_data(variables, data.train)
      state, stage_index = jax.device_put(experiment.initial_state(variables), replicated), 0
    # Where selection stands is what the kept rows say; best weights saved after them go.
    progress = selection_lib.replay(selection, writers.read_metrics(workdir))
    if best is not None:
      best.rewind(int(state.step))
    log.write_config(config.to_dict())
    if log.is_writer:
      datasets.write_spec(workdir, spec)

    # --- Train loop, stage by stage.
    signals.stop_if_requested(
        (f'before training resumed at step {int(state.step)}' if int(state.step) else
         'before training started') + ': nothing new to save. Run the same command again to '
        'continue.')
    signals.note = preemption.WHILE_TRAINING
    inputs = features.FeatureCache(data, trainers[0].eval_batch_size, mesh,
                                   functools.partial(hooks.caching_watched, log, signals))
    guard = hooks.GuardHook(diagnostics.CollapseGuard(
        len(spec.class_names), config.collapse_guard.every_steps,
        config.collapse_guard.patience_steps, config.collapse_guard.loss_band),
                      config.stop_on_collapse, log)
    rows = hooks.EpochRowHook(log, len(experiment.stages) > 1)
    chooser = ([hooks.SelectionHook(selection, progress, rows, best, log)]
               if selection.active else [])
    loop = Loop(state, running, mesh=mesh, batch_size=config.batch_size, seed=config.seed,
                steps_per_epoch=steps_per_epoch, hooks=[
                    hooks.ProgressHook(log), guard, rows, *chooser,
                    hooks.CheckpointHook(checkpointer, config.checkpoint_every_steps, guard, {
                        'pretrained': pretrained_info, 'data': data_fingerprints}),
                    hooks.SignalHook(signals)], steps_per_dispatch=steps_per_call,
                data_on_device=on_device, **timings)
    loop.ended = progress.stopped  # Stopped early, before its results were written.
    for stage, trainer in zip(experiment.stages, trainers):
      end_step = stage.end_step(steps_per_epoch, total_steps)
      if loop.ended:
        break
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
    signals.note = preemption.AFTER_TRAINING
  finally:
    checkpointer.wait()
    checkpointer.close()
    if best is not None:
      best.close()

  # --- Evaluate on the test split (the best epoch's weights where selected), write results.
  eval_start = time.perf_counter()
  evaluated = selection_lib.evaluation_state(loop.state, workdir, selection, progress)
  test_split = inputs.stage_data(experiment.stages[-1].cache_features, trainers[-1].model,
                                 evaluated.evaluation_variables).test
  test_metrics, predictions, labels = trainers[-1].evaluate(evaluated, test_split)
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
  if config.ema_decay or selection.active:
    results['weights'] = selection_lib.weights_description(selection, progress,
                                                           config.ema_decay)
  if selection.active:
    results['selection'] = progress.summary(selection)
  # The reports first: results.json is what marks the run finished, so a report the disk
  # refused is written by the next run of the same command, not skipped.
  confusions = (report.write_report(workdir, labels, predictions, data.class_names,
                                    writers.read_metrics(workdir), config.name)
                if log.is_writer else None)
  log.write_results(results)
  if log.is_writer:
    log.announce(report.format_confusions(confusions))
  return results
