"""Runs a study's suite of configs and writes its results table next to the study's.

    python experiments/reproduce.py --suite=fashion_mnist --local_data_dir=../shared/data/fashion_mnist
    python experiments/reproduce.py --suite=cifar10 --local_data_dir=../shared/data/cifar10_jpg.tar.gz
    python experiments/reproduce.py --suite=fashion_mnist --quick   # A few steps each: smoke check.
    python experiments/reproduce.py --suite=fashion_mnist --only=fashion_mnist_best ...

Each config runs in its own workdir (`checkpoints/<suite>/<config>`; a run
that already finished or stopped is resumed, not repeated). Then
`experiments/results/<suite>.md` gets the study's table next to cnnjax's
(params, epochs, test loss and accuracy, train time, time per epoch, eval
time, device), the machine and data it ran on, a combined figure of every
model's accuracy per epoch (`<suite>_curves.png`) and, in `<suite>/`, each
run's confusion matrix and classification report. A config that cannot run
here is listed with the reason (VGG16/MobileNetV2 at study length need an
accelerator; transfer configs need the ImageNet weights), never with numbers.
Each suite ends with its "beyond the study" config (`<suite>_best`: what the
recipes of `training.recipes` reach). `--only` runs some configs and keeps the
other rows as the suite's `<suite>.json` last recorded them.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

if __name__ == '__main__':  # From the first moment: the imports and flags take a moment.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(exit_at_once.NOTHING_STARTED))

import argparse  # pylint: disable=wrong-import-position
import datetime  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import platform  # pylint: disable=wrong-import-position
import shutil  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
from typing import Sequence  # pylint: disable=wrong-import-position

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from cnnjax import cli  # pylint: disable=wrong-import-position

# The studies' own numbers: what each config reproduces.
STUDY = {
    'mlp_256_128': {'metric': 'test accuracy', 'value': 0.8898},
    'mlp_128_64': {'metric': 'test accuracy', 'value': 0.8850},
    'mlp_512_256_128': {'metric': 'test accuracy', 'value': 0.8934},
    'cnn_simple': {'metric': 'test accuracy', 'value': 0.9100},
    'cnn_deep': {'metric': 'test accuracy', 'value': 0.9287},
    'vgg_scratch': {'metric': 'test accuracy', 'value': 0.0969},
    'vgg_transfer': {'metric': 'test accuracy', 'value': 0.9129},
    'cifar_cnn': {'metric': 'validation accuracy', 'value': 0.71},
    'cifar_mobilenet_transfer': {'metric': 'validation accuracy', 'value': 0.89},
}
SUITES = {
    'fashion_mnist': ('mlp_256_128', 'mlp_128_64', 'mlp_512_256_128', 'cnn_simple', 'cnn_deep',
                      'vgg_scratch', 'vgg_transfer', 'fashion_mnist_best'),
    'cifar10': ('cifar_cnn', 'cifar_mobilenet_transfer', 'cifar10_best'),
}
BEYOND = {  # Each suite's config beyond the study, and the study model it is compared with.
    'fashion_mnist_best': 'cnn_deep',
    'cifar10_best': 'cifar_cnn',
}
DATA_PROVENANCE = {
    'fashion_mnist': 'Fashion-MNIST, 60,000 train / 10,000 test images',
    'cifar10': 'CIFAR-10, 50,000 train (40,000 train + 10,000 validation) / 10,000 test images',
}
BACKBONE_MODELS = ('vgg16_classifier', 'mobilenet_v2_classifier')
QUICK_STEPS = 3


def load_config(name: str, args):
  import importlib
  config = importlib.import_module(f'configs.{name}').get_config()
  if args.local_data_dir:
    config.local_data_dir = args.local_data_dir
  if args.quick:
    config.num_train_steps = QUICK_STEPS
  return config


def why_not_here(config, args) -> str | None:
  """Why a config is not run on this machine, or None if it is."""
  import jax
  if (config.model in BACKBONE_MODELS and jax.default_backend() == 'cpu'
      and not args.quick and not args.allow_cpu):
    return ('not run here: VGG16/MobileNetV2 at 96x96 for the study\'s epochs needs a GPU or '
            'TPU (e.g. experiments/colab.ipynb); --allow_cpu runs it anyway')
  return None


def run_config(name: str, args) -> dict:
  """Trains (or resumes) one config; its results, epochs, and where its reports are."""
  from cnnjax import train
  from cnnjax.errors import UserError
  from cnnjax.runs import writers
  from configs import default
  config = load_config(name, args)
  reason = why_not_here(config, args)
  if reason:
    return {'name': name, 'skipped': reason}
  workdir = os.path.join(args.workdir_root, name)
  try:
    results = train.train_and_evaluate(config, workdir, default.get_config())
  except UserError as error:  # Listed, not hidden.
    return {'name': name, 'skipped': f'could not run: {error}'}
  longer = train.trained_longer_than_asked(config, results)
  if longer:
    return {'name': name, 'skipped': f'not listed: {longer} (pass another --workdir_root, or '
                                     f'move {workdir} away)'}
  return {'name': name, 'results': results, 'rows': writers.read_metrics(workdir),
          'workdir': workdir}


def median_epoch_seconds(rows: list[dict]) -> float | None:
  """Median over epochs after the first (which includes compiling), as a user times epochs."""
  seconds = [r['epoch_seconds'] for r in rows[1:]] or [r['epoch_seconds'] for r in rows]
  return statistics.median(seconds) if seconds else None


def plot_suite_curves(runs: list[dict], path: str, suite: str) -> None:
  """Every model's accuracy per epoch on one figure, as the studies plotted them."""
  from cnnjax.runs import report
  plt = report.pyplot()
  has_val = any('val_accuracy' in row for run in runs for row in run.get('rows', []))
  figure, axes = plt.subplots(1, 2 if has_val else 1, figsize=(12 if has_val else 7, 4.5),
                                 squeeze=False)
  for ax, key, label in zip(axes[0], ('train_accuracy', 'val_accuracy'),
                            ('training accuracy', 'validation accuracy')):
    for run in runs:
      rows = [r for r in run.get('rows', []) if key in r]
      if rows:
        ax.plot([r['epoch'] for r in rows], [r[key] for r in rows], '-o', markersize=3,
                label=run['name'])
    report.style_epoch_axis(ax, label)
  figure.suptitle(f'{suite}: accuracy per epoch')
  report.save_figure(figure, path)


def _fmt(value, spec: str) -> str:
  return '–' if value is None else format(value, spec)


def markdown(suite: str, name: str, runs: list[dict], args, device: str,
             kept: Sequence[str] = ()) -> str:
  """The results page; `name` is the suite's output name (`<suite>` or `<suite>_quick`);
  `kept`: configs that could not run this time, whose recorded rows stay."""
  lines = [f'# {suite} suite: the study next to cnnjax', '',
           f'Made by `python experiments/reproduce.py --suite={suite}'
           f'{" --quick" if args.quick else ""}` on {datetime.date.today().isoformat()}'
           + (f' (this time `--only={args.only}`: the other rows are as this page recorded '
              'them before, on the machine and day its earlier versions name)' if args.only
              else '') + '.', '',
           f'- Machine: {device}.',
           f'- Data: {DATA_PROVENANCE[suite]}, from '
           f'`{args.local_data_dir or "TFDS"}`.',
           '- One run per config, seed 0. Train time includes validation; eval time is the test '
           'split once; time per epoch is the median over epochs after the first.']
  if kept:
    lines.append('- ' + ', '.join(f'`{c}`' for c in kept) + ' could not run this time: '
                 'their rows are as this page recorded them before.')
  lines += [f'- {note}' for note in args.note] + ['']
  if args.quick:
    lines += [f'**Quick smoke check: {QUICK_STEPS} training steps per config. These numbers '
              'say the suite runs, nothing about accuracy.**', '']
  lines += ['| config | params (total / trainable) | epochs | study | cnnjax test loss | '
            'cnnjax test accuracy | cnnjax val accuracy | train time | time per epoch | '
            'eval time | device |', '|' + '---|' * 11]
  for run in runs:
    study = STUDY.get(run['name']) or STUDY.get(BEYOND.get(run['name'], ''))
    study_text = f"{study['value']:.4f} ({study['metric']})" if study else '–'
    if run['name'] in BEYOND:
      study_text = f"beyond the study; its best, `{BEYOND[run['name']]}`: {study_text}"
    if 'skipped' in run:
      lines.append(f"| `{run['name']}` | | | {study_text} | {run['skipped']} | | | | | | |")
      continue
    r, rows = run['results'], run['rows']
    val = rows[-1].get('val_accuracy') if rows else None
    params = f"{r['params_total']:,} / {r['params_trainable']:,}"
    lines.append(
        f"| `{run['name']}` | {params} | {r['epochs']:g} | {study_text} | {r['test_loss']:.4f} | "
        f"{r['test_accuracy']:.4f} | {_fmt(val, '.4f')} | {r['train_seconds']:.0f} s | "
        f"{_fmt(median_epoch_seconds(rows), '.1f')} s | {r['eval_seconds']:.1f} s | "
        f"{r['num_devices']}x {r['device_kind']} |")
  lines += ['', f'![accuracy per epoch]({name}_curves.png)', '', 'Per run:', '']
  for run in runs:
    if 'skipped' not in run:
      lines.append(f"- `{run['name']}`: [confusion matrix]({name}/{run['name']}_confusion_matrix"
                   f".png), [classification report]({name}/{run['name']}_classification_report"
                   f".txt), [curves]({name}/{run['name']}_curves.png)")
  return '\n'.join(lines) + '\n'


def write_suite(suite: str, runs: list[dict], args, kept: Sequence[str] = ()) -> str:
  from cnnjax.runs import atomic, report
  import jax
  name = f'{suite}_quick' if args.quick else suite
  with atomic.refusals_reported(args.results_dir):
    os.makedirs(os.path.join(args.results_dir, name), exist_ok=True)
    for run in runs:
      for file in (report.CONFUSION_PNG, report.REPORT_TXT, report.CURVES_FILE):
        source = os.path.join(run.get('workdir', ''), file)
        if os.path.exists(source):
          shutil.copy(source, os.path.join(args.results_dir, name, f"{run['name']}_{file}"))
  plot_suite_curves(runs, os.path.join(args.results_dir, f'{name}_curves.png'), suite)
  device = (f'{jax.device_count()}x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
            f'{os.cpu_count()} CPU cores, {platform.platform()}, jax {jax.__version__}')
  path = os.path.join(args.results_dir, f'{name}.md')
  with atomic.replaced_whole(path) as f:  # The recorded page is replaced whole or not at all.
    f.write(markdown(suite, name, runs, args, device, kept))
  with atomic.replaced_whole(os.path.join(args.results_dir, f'{name}.json')) as f:
    json.dump([{k: v for k, v in run.items() if k != 'workdir'} for run in runs], f, indent=2)
  return path


def recorded_runs(results_dir: str, name: str) -> list[dict]:
  """The runs the suite's page last recorded (`<name>.json`), [] if there is none; one that
  cannot be read is an error before any training, not a traceback."""
  from cnnjax.errors import UserError
  from cnnjax.runs import writers
  path = os.path.join(results_dir, f'{name}.json')
  if not os.path.exists(path):
    return []
  meaning = ("It holds the results the suite's page keeps for the configs that do not run now: "
             'restore it (git checkout), or move it away to write the page from this run alone.')
  runs = writers.read_record(path, meaning, UserError, expected=list)
  if not all(isinstance(run, dict) and 'name' in run for run in runs):
    raise UserError(f'{path} is unreadable (not a list of runs, each with its name). {meaning}')
  return runs


def main(argv: list[str] | None = None) -> str:
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--suite', choices=sorted(SUITES), required=True)
  parser.add_argument('--local_data_dir', type=os.path.expanduser,
                      default='', help='Dataset files (else TFDS).')
  parser.add_argument('--quick', action='store_true', help=f'{QUICK_STEPS} steps per config.')
  parser.add_argument('--allow_cpu', action='store_true',
                      help='Also run VGG16/MobileNetV2 configs at study length on a CPU.')
  parser.add_argument('--only', default='', help='Comma-separated configs of the suite to run.')
  parser.add_argument('--workdir_root', type=os.path.expanduser,
                      default='', help='Default checkpoints/<suite>[_quick].')
  parser.add_argument('--results_dir', type=os.path.expanduser,
                      default=os.path.join(REPO_ROOT, 'experiments', 'results'))
  parser.add_argument('--note', action='append', default=[],
                      help='A line for the results page (data provenance, machine load...).')
  args = parser.parse_args(argv)
  name = f'{args.suite}_quick' if args.quick else args.suite
  args.workdir_root = args.workdir_root or os.path.join(REPO_ROOT, 'checkpoints', name)
  only = [c for c in args.only.split(',') if c]
  unknown = sorted(set(only) - set(SUITES[args.suite]))
  if unknown:
    parser.error(f'--only: {unknown} not in the {args.suite} suite ({", ".join(SUITES[args.suite])})')
  if args.local_data_dir and not os.path.exists(args.local_data_dir):
    parser.error(f'--local_data_dir={args.local_data_dir} does not exist.')
  with cli.running_as_tool('reproduce.py'):
    from cnnjax.runs import workdir as workdir_lib
    workdir_lib.check_script_folders(args.results_dir, args.workdir_root)
    from cnnjax import sharding
    sharding.start_backend()
    return run_suite(args, name, only)


def run_suite(args, name: str, only: list[str]) -> str:
  """Runs the suite's configs (or `only` those) and writes its page, keeping what the page
  recorded for every config that does not run now: a config left out, and one that could
  not run this time (a recorded result is not replaced by a failure). If nothing ran, the
  page is left as it was."""
  from cnnjax.errors import UserError
  recorded = {run['name']: run for run in recorded_runs(args.results_dir, name)}
  runs, kept, failures = [], [], []
  for config in SUITES[args.suite]:
    if only and config not in only:
      if config in recorded:
        runs.append(recorded[config])
      continue
    print(f'=== {config}', flush=True)
    run = run_config(config, args)
    if 'skipped' in run:
      print(f"{config}: {run['skipped']}", flush=True)
      failures.append(f"{config}: {run['skipped']}")
      if 'results' in recorded.get(config, {}):
        run = recorded[config]
        kept.append(config)
    runs.append(run)
  if len(failures) == len(only or SUITES[args.suite]):
    raise UserError(f'no config ran ({"; ".join(failures)}); the results page was left as it '
                    'was.')
  path = write_suite(args.suite, runs, args, kept)
  print(f'Wrote {path}')
  return path


if __name__ == '__main__':
  main()
