"""Evaluates a run from its latest checkpoint and writes its reports.

    python -m cnnjax.evaluate --workdir=checkpoints/cnn_simple [--local_data_dir=DIR] [--split=test]

Works on a finished run and on one that was stopped: the latest checkpoint
is evaluated on the run's test split (or --split), and the workdir gets
`evaluation.json`, the curves so far, the confusion matrix and the
classification report (see cnnjax.report). The console lists the most
confused classes.
"""
import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

EVALUATION_FILE = 'evaluation.json'


def evaluate(workdir: str, local_data_dir: str | None = None, split: str | None = None) -> dict:
  """Evaluates the latest checkpoint in `workdir`; writes the reports; returns the metrics."""
  from cnnjax import datasets, report, runs, sharding, train, writers
  config = runs.load_config(workdir)
  if local_data_dir is not None:
    config.local_data_dir = local_data_dir
  split = split or config.test_split
  restored = train.restore_latest_state(config, workdir)
  data = datasets.load_split(config.dataset, split, config.local_data_dir, config.tfds_data_dir)
  class_names = datasets.DATASETS[config.dataset].class_names
  mesh = sharding.create_mesh()
  trainer = train.Trainer(config, train.create_model(config, len(class_names)),
                          train.create_optimizer(config), mesh)
  metrics, predictions = trainer.evaluate(restored.state, data)
  confusions = report.write_report(workdir, data.labels, predictions, class_names,
                                   writers.read_metrics(workdir), config.name)
  evaluation = {'step': restored.step, 'split': split, 'examples': len(data),
                'loss': metrics['loss'], 'accuracy': metrics['accuracy'],
                'worst_confusions': confusions}
  writers.write_json(os.path.join(workdir, EVALUATION_FILE), evaluation)
  print(f'{config.name} at step {restored.step} on {split} ({len(data)} examples): loss '
        f'{metrics["loss"]:.4f}, accuracy {metrics["accuracy"]:.4f}. Reports in {workdir}.')
  print(report.format_confusions(confusions), flush=True)
  return evaluation


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m cnnjax.evaluate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='The run directory (as for cnnjax.main).')
  parser.add_argument('--local_data_dir', default=None,
                      help='Where the dataset files are now, if not where the run read them.')
  parser.add_argument('--split', default=None,
                      help="Split to evaluate (TFDS syntax); default the run's test split.")
  args = parser.parse_args(argv)
  from cnnjax import cli
  with cli.reporting_user_errors('cnnjax.evaluate'):
    evaluate(args.workdir, args.local_data_dir, args.split)


if __name__ == '__main__':
  main(sys.argv[1:])
