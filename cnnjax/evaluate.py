"""Evaluates a run from its latest checkpoint and writes its reports.

    python -m cnnjax.evaluate --workdir=checkpoints/cnn_simple [--local_data_dir=DIR] [--split=test]

Works on a finished run and on one that was stopped: the latest checkpoint
(or, where config.selection keeps them, the best epoch's weights so far, unless
--weights=last) is evaluated on the run's test split, and the workdir gets
`evaluation.json`, the curves so far, the confusion matrix and the classification
report (see cnnjax.runs.report). Another split (--split), or other data
(--local_data_dir with other examples than the run was tested on), writes its
reports to `evaluations/<split>` (`<data>-<split>`) in the workdir instead, so
that the run's own reports stay those of the test split `results.json` gives.
The console lists the most confused classes.
"""
# How a stop signal's line ends, whenever it comes: the reports are written whole or not at all.
NOTHING_WRITTEN = "before writing anything: the run's files are as they were."

if __name__ == '__main__':  # From the first moment: the imports and flags take a moment.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(NOTHING_WRITTEN))

import argparse  # pylint: disable=wrong-import-position
import os
import re
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')



def _name_part(text: str) -> str:
  """`text` (a split such as 'train[:80%]', a folder's name) as part of a folder name:
  ':' as '..' ('train[..80%]'), characters that are unsafe in file names as '_'."""
  return re.sub(r'[^\w.%+\[\]-]+', '_', text.replace(':', '..')).strip('_') or '_'


def reports_dir(workdir: str, config, split: str, local_data_dir: str | None,
                fingerprint: str, tested_on: dict[str, str]) -> str:
  """Where an evaluation of `split` writes its reports.

  The workdir itself for the run's test split on the examples it was tested on
  (`tested_on`: the fingerprints its checkpoint recorded; `fingerprint`: those of the
  examples loaded now, compared where --local_data_dir points elsewhere). Any other split
  or data goes to `evaluations/`, never over the run's reports.
  """
  from cnnjax.runs import report
  roles = {config.train_split: 'train', config.val_split: 'val', config.test_split: 'test'}
  same_data = local_data_dir is None or (split in roles
                                         and tested_on.get(roles[split]) == fingerprint)
  if same_data and split == config.test_split:
    return workdir
  name = _name_part(split) if same_data else (
      f'{_name_part(os.path.basename(os.path.normpath(local_data_dir)))}-{_name_part(split)}')
  return os.path.join(workdir, report.EVALUATIONS_DIR, name)


def _load_split(options, split: str, spec, val_split: str):
  """`datasets.load_split`; where `split` is 'val' or 'validation' and the data has no such
  split, the error names the one the run validated on (a slice of train, typically)."""
  from cnnjax.data import datasets, image_tree
  from cnnjax.errors import UserError
  try:
    return datasets.load_split(options, split, spec)
  except datasets.OtherDatasetError as e:  # Its way to train on them is no way to evaluate.
    raise datasets.OtherDatasetError(
        f'{e.finding}. This run was trained on {options.dataset}: evaluate it on '
        f'{options.dataset}\'s files (--local_data_dir=DIR), or these with a run trained on '
        'them.') from e
  except image_tree.KerasLayoutSplitError as e:
    raise image_tree.KerasLayoutSplitError(
        f"{e.finding}. Evaluate on part of train, e.g. --split='train[90%:]', or all of it, "
        '--split=train.') from e
  except UserError as e:
    if split not in ('val', 'validation') or not val_split or val_split == split:
      raise
    raise UserError(f"{e} The run validated on {val_split!r}: --split='{val_split}' "
                    'evaluates that.') from e


def evaluate(workdir: str, defaults, local_data_dir: str | None = None,
             split: str | None = None, weights: str = 'best') -> dict:
  """Evaluates the latest checkpoint in `workdir`; writes the reports; returns the metrics.

  `defaults`: configs/default.py's config, under the run's saved one. `weights`: as for
  `saved.evaluation_state`.
  """
  from cnnjax import sharding
  from cnnjax.data import datasets, image_tree
  from cnnjax.runs import atomic, preemption, report, saved, writers
  from cnnjax.runs import workdir as workdir_lib
  from cnnjax.training import setup
  config = saved.load_config(workdir, defaults)
  if local_data_dir is not None:
    config.local_data_dir = local_data_dir
  elif config.local_data_dir and not os.path.exists(config.local_data_dir):
    raise image_tree.LocalDataError(
        f'The run read its data from {config.local_data_dir}, which does not exist (any more, '
        'or from here): pass --local_data_dir=DIR where those files are now.')
  split = split or config.test_split
  options = datasets.DataOptions.from_config(config)
  spec = datasets.saved_spec(workdir, options)
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))
  reported = saved.evaluation_state(experiment, workdir, config, weights)
  step, weights = reported.step, reported.weights
  data = _load_split(options, split, spec, config.val_split)
  where = reports_dir(workdir, config, split, local_data_dir,
                      data.fingerprint() if local_data_dir is not None else '', reported.data)
  workdir_lib.check_folder_can_be_written(  # Before the evaluation, not after it.
      where, '--workdir', f'{where}, where the reports go,',
      'make the run writable to this user, or evaluate a copy of it')
  trainer = experiment.trainer(len(experiment.stages) - 1, sharding.create_mesh(),
                               config.eval_batch_size, on_features=False)
  metrics, predictions, labels = trainer.evaluate(reported.state, data)
  # A second of writing and printing, which a stop signal does not cut short: it would leave
  # the reports of two evaluations mixed.
  with preemption.handling(preemption.SIGNALS, signal.SIG_IGN):
    with atomic.refusals_reported(where):
      os.makedirs(where, exist_ok=True)
    own = where == workdir  # The run's reports: with its curves, titled with its name.
    confusions = report.write_report(where, labels, predictions, spec.class_names,
                                     writers.read_metrics(workdir) if own else [],
                                     config.name if own else f'{config.name} on {split}')
    evaluation = {'step': step, 'weights': weights, 'split': split, 'examples': len(labels),
                  'loss': metrics['loss'], 'accuracy': metrics['accuracy'],
                  'worst_confusions': confusions}
    if local_data_dir is not None:
      evaluation['local_data_dir'] = os.path.abspath(local_data_dir)
    writers.write_json(os.path.join(where, report.EVALUATION_FILE), evaluation)
    weights_note = '' if weights == f'step {step}' else f' (weights of {weights})'
    print(f'{config.name} at step {step}{weights_note} on {split} ({len(labels)} examples): loss '
          f'{metrics["loss"]:.4f}, accuracy {metrics["accuracy"]:.4f}. Reports in {where}.')
    print(report.format_confusions(confusions), flush=True)
  return evaluation


def main(argv: list[str] | None = None) -> None:
  from cnnjax import cli
  parser = cli.ArgumentParser(prog='python -m cnnjax.evaluate', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, type=os.path.expanduser,
                      help='The run directory (as for cnnjax.main).')
  parser.add_argument('--local_data_dir', default=None, type=os.path.expanduser,
                      help='Where the dataset files are now, if not where the run read them.')
  parser.add_argument('--split', default=None,
                      help="Split to evaluate (TFDS syntax); default the run's test split.")
  cli.add_weights_flag(parser)
  args = parser.parse_args(argv)
  with cli.running_as_tool('cnnjax.evaluate', NOTHING_WRITTEN):
    from cnnjax import sharding
    from configs import default  # Imports take seconds: a stop signal ends them in one line.
    sharding.start_backend()
    evaluate(args.workdir, default.get_config(), args.local_data_dir, args.split, args.weights)


if __name__ == '__main__':
  main(sys.argv[1:])
