"""Evaluates a run from its latest checkpoint and writes its reports.

    python -m cnnjax.evaluate --workdir=checkpoints/cnn_simple [--local_data_dir=DIR] [--split=test]

Works on a finished run and on one that was stopped: the latest checkpoint
(or, where config.selection keeps them, the best epoch's weights so far) is
evaluated on the run's test split (or --split), and the workdir gets
`evaluation.json`, the curves so far, the confusion matrix and the
classification report (see cnnjax.runs.report). The console lists the most
confused classes.
"""
import argparse
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

EVALUATION_FILE = 'evaluation.json'


def evaluate(workdir: str, defaults, local_data_dir: str | None = None,
             split: str | None = None) -> dict:
  """Evaluates the latest checkpoint in `workdir`; writes the reports; returns the metrics.

  `defaults`: configs/default.py's config, under the run's saved one.
  """
  from cnnjax import sharding
  from cnnjax.data import datasets
  from cnnjax.runs import preemption, report, saved, writers
  from cnnjax.training import setup
  config = saved.load_config(workdir, defaults)
  if local_data_dir is not None:
    config.local_data_dir = local_data_dir
  split = split or config.test_split
  options = datasets.DataOptions.from_config(config)
  spec = datasets.saved_spec(workdir, options)
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))
  state, weights, step = saved.evaluation_state(experiment, workdir, config)
  data = datasets.load_split(options, split, spec)
  trainer = experiment.trainer(len(experiment.stages) - 1, sharding.create_mesh(),
                               config.eval_batch_size, on_features=False)
  metrics, predictions, labels = trainer.evaluate(state, data)
  # A second of writing and printing, which a stop signal does not cut short: it would leave
  # the reports of two evaluations mixed.
  with preemption.handling(preemption.SIGNALS, signal.SIG_IGN):
    confusions = report.write_report(workdir, labels, predictions, spec.class_names,
                                     writers.read_metrics(workdir), config.name)
    evaluation = {'step': step, 'weights': weights, 'split': split, 'examples': len(data),
                  'loss': metrics['loss'], 'accuracy': metrics['accuracy'],
                  'worst_confusions': confusions}
    writers.write_json(os.path.join(workdir, EVALUATION_FILE), evaluation)
    weights_note = '' if weights == f'step {step}' else f' (weights of {weights})'
    print(f'{config.name} at step {step}{weights_note} on {split} ({len(data)} examples): loss '
          f'{metrics["loss"]:.4f}, accuracy {metrics["accuracy"]:.4f}. Reports in {workdir}.')
    print(report.format_confusions(confusions), flush=True)
  return evaluation


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m cnnjax.evaluate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, type=os.path.expanduser,
                      help='The run directory (as for cnnjax.main).')
  parser.add_argument('--local_data_dir', default=None, type=os.path.expanduser,
                      help='Where the dataset files are now, if not where the run read them.')
  parser.add_argument('--split', default=None,
                      help="Split to evaluate (TFDS syntax); default the run's test split.")
  args = parser.parse_args(argv)
  from cnnjax import cli
  with cli.running_as_tool('cnnjax.evaluate', 'before writing anything: the run\'s files '
                          'are as they were.'):
    from configs import default  # Imports take seconds: a stop signal ends them in one line.
    evaluate(args.workdir, default.get_config(), args.local_data_dir, args.split)


if __name__ == '__main__':
  main(sys.argv[1:])
