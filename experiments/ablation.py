"""What each ingredient of a recipe adds: the config trained again with each piece removed once.

    python experiments/ablation.py --config=configs/fashion_mnist_best.py \
        --local_data_dir=../shared/data/fashion_mnist [--epochs=N] [--only=batch_norm,ema]

Runs the config as it is ("full recipe") and once per ingredient it uses, with that
ingredient turned off and everything else unchanged (same seed, data, epochs), each in its
own workdir (`checkpoints/ablation/<config>/<piece>`: a finished run is read back, a
stopped one resumed). Ingredients that change only what is evaluated (the EMA, flip
test-time augmentation) are not trained again: the full run's final weights are evaluated
without them, which is what training again would give (training does not read them). `--epochs` shortens every run alike, the full recipe's included,
for a cheaper table; the page says so. Writes
`experiments/results/<config>_ablation.md` (and `.json`): test accuracy and loss of each
run, its difference from the full recipe's, the epoch whose weights were evaluated, the
train time, and the machine. One seed: differences of a few tenths of a point are within
seed-to-seed noise.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

if __name__ == '__main__':  # From the first moment: the imports (jax) take seconds.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(exit_at_once.NOTHING_STARTED))

import argparse  # pylint: disable=wrong-import-position
import datetime  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import platform  # pylint: disable=wrong-import-position

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from cnnjax import cli  # pylint: disable=wrong-import-position
from cnnjax.runs import atomic  # pylint: disable=wrong-import-position
from cnnjax.runs import exit_at_once  # pylint: disable=wrong-import-position
from experiments.benchmark import load_config  # pylint: disable=wrong-import-position

# Each ingredient: when a config uses it, and the fields that turn it off. EVALUATION_ONLY
# ones leave training as it is: the full run is evaluated without them.
PIECES = {
    'batch_norm': ('BatchNorm in the model',
                   lambda c: c.model_kwargs.get('batch_norm', False),
                   {'model_kwargs.batch_norm': False}),
    'crop_flip': ('random crop and flip',
                  lambda c: c.augment.crop_padding or c.augment.flip,
                  {'augment.crop_padding': 0, 'augment.flip': False}),
    'erasing': ('random erasing', lambda c: c.augment.erasing_prob > 0,
                {'augment.erasing_prob': 0.0}),
    'flip_test': ('flip test-time augmentation', lambda c: c.augment.flip_test,
                  {'augment.flip_test': False}),
    'translate_test': ('translated test-time views', lambda c: c.augment.translate_test,
                       {'augment.translate_test': 0}),
    'schedule': ('learning-rate schedule (constant rate instead)',
                 lambda c: c.schedule != 'constant' or c.warmup_steps,
                 {'schedule': 'constant', 'warmup_steps': 0}),
    'weight_decay': ('decoupled weight decay', lambda c: c.weight_decay > 0,
                     {'weight_decay': 0.0}),
    'label_smoothing': ('label smoothing', lambda c: c.label_smoothing > 0,
                        {'label_smoothing': 0.0}),
    'ema': ('EMA of the weights', lambda c: c.ema_decay > 0, {'ema_decay': 0.0}),
    'selection': ('best-epoch selection (last epoch instead)', lambda c: c.selection.monitor,
                  {'selection.monitor': ''}),
}
EVALUATION_ONLY = ('flip_test', 'translate_test', 'ema')


def apply(config, overrides: dict) -> None:
  for field, value in overrides.items():
    *parents, leaf = field.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value


def pieces_used(config) -> list[str]:
  return [key for key, (_, used, _) in PIECES.items() if used(config)]


def runs_of(config, only: list[str]) -> list[tuple[str, str, dict]]:
  """(key, description, overrides) of the full recipe and of each piece it uses (`only`
  those, where given)."""
  runs = [('full', 'full recipe', {})]
  for key in pieces_used(config):
    if not only or key in only:
      description, _, overrides = PIECES[key]
      runs.append((key, f'without {description}', overrides))
  return runs


def run_config(config_path: str, key: str, overrides: dict, args):
  """The config of run `key`: the file's, with the command line's data and epochs."""
  config = load_config(config_path)
  if args.local_data_dir:
    config.local_data_dir = args.local_data_dir
  if args.epochs:
    config.num_epochs = args.epochs
  apply(config, overrides)
  if key != 'full':
    config.name = f'{config.name}-without-{key}'
  return config


def train(config_path: str, key: str, overrides: dict, args) -> dict:
  from cnnjax import train as train_lib
  from configs import default
  from cnnjax.errors import UserError
  config = run_config(config_path, key, overrides, args)
  print(f'=== {key}', flush=True)
  workdir = os.path.join(args.workdir_root, key)
  results = train_lib.train_and_evaluate(config, workdir, default.get_config())
  longer = train_lib.trained_longer_than_asked(config, results)
  if longer:  # Set beside runs of the length asked, its difference would be the length's.
    raise UserError(f'{key}: {longer}. Pass another --workdir_root, or move {workdir} away; '
                    'no page was written.')
  return results


def evaluate_without(config_path: str, key: str, overrides: dict, args, full: dict) -> dict:
  """The full run's final weights evaluated on its test split without ingredient `key`."""
  import time
  from cnnjax import sharding
  from cnnjax.data import datasets
  from cnnjax.runs import saved
  from cnnjax.training import setup
  from cnnjax.training.steps import TrainState
  print(f'=== {key} (evaluated, not trained)', flush=True)
  full_config = run_config(config_path, 'full', {}, args)
  config = run_config(config_path, key, overrides, args)
  workdir = os.path.join(args.workdir_root, 'full')
  options = datasets.DataOptions.from_config(config)
  spec = datasets.saved_spec(workdir, options)
  # Restored as the full recipe saved it; evaluated as the ablated config would.
  state = saved.restore_latest(setup.build(full_config, spec.image_shape,
                                           len(spec.class_names)), workdir).state
  if key == 'ema':
    state = TrainState.of_weights(state.variables)
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))
  trainer = experiment.trainer(len(experiment.stages) - 1, sharding.create_mesh(),
                               config.eval_batch_size, on_features=False)
  start = time.perf_counter()
  metrics, _, _ = trainer.evaluate(state, datasets.load_split(options, config.test_split, spec))
  return dict(full, test_loss=metrics['loss'], test_accuracy=metrics['accuracy'],
              eval_seconds=time.perf_counter() - start, weights=f'the full run\'s, without {key}',
              evaluated_only=True)


def markdown(name: str, rows: list[dict], args, epochs: int, device: str) -> str:
  full = rows[0]['results']
  lines = [f'# {name}: what each ingredient adds', '',
           f'Made by `python experiments/ablation.py --config={args.config}'
           f'{f" --epochs={args.epochs}" if args.epochs else ""}` on '
           f'{datetime.date.today().isoformat()}.', '',
           f'- Machine: {device}.',
           f'- Data: `{args.local_data_dir or "TFDS"}`. Seed 0, one run each, {epochs} epochs'
           + (' (shortened from the config\'s: read the differences, not the accuracies)'
              if args.epochs else '') + '.',
           '- Each row removes one ingredient from the full recipe and keeps the rest.']
  lines += [f'- {note}' for note in args.note]
  lines += ['', '| run | test accuracy | vs full | test loss | weights of epoch | train time |',
            '|---|---|---|---|---|---|']
  for row in rows:
    r = row['results']
    selected = r.get('selection') or {}
    epoch = selected.get('best_epoch') if 'best epoch' in r.get('weights', '') else r['epochs']
    delta = r['test_accuracy'] - full['test_accuracy']
    trained = ('full run\'s weights, evaluated without it' if r.get('evaluated_only')
               else f"{r['train_seconds']:.0f} s")
    lines.append(f"| {row['description']} | {r['test_accuracy']:.4f} | "
                 f"{'–' if row['key'] == 'full' else f'{delta * 100:+.2f} pt'} | "
                 f"{r['test_loss']:.4f} | {epoch:g} of {r['epochs']:g} | {trained} |")
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> str:
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', type=os.path.expanduser,
                      required=True, help='A config file, e.g. configs/x.py.')
  parser.add_argument('--local_data_dir', type=os.path.expanduser,
                      default='', help='Dataset files (else TFDS).')
  parser.add_argument('--epochs', type=int, help='Shorten every run to N epochs.')
  parser.add_argument('--only', default='', help=f'Comma-separated pieces: {", ".join(PIECES)}.')
  parser.add_argument('--workdir_root', type=os.path.expanduser, default='')
  parser.add_argument('--results_dir', type=os.path.expanduser,
                      default=os.path.join(REPO_ROOT, 'experiments', 'results'))
  parser.add_argument('--note', action='append', default=[], help='A line for the page.')
  args = parser.parse_args(argv)
  if not os.path.isfile(args.config):
    parser.error(f'--config={args.config} is not a file.')
  if args.epochs is not None and args.epochs < 1:
    parser.error(f'--epochs={args.epochs}: give 1 or more, or leave it out for the config\'s '
                 'own number of epochs.')
  only = [p for p in args.only.split(',') if p]
  if unknown := sorted(set(only) - set(PIECES)):
    parser.error(f'--only: unknown piece(s) {unknown}; the pieces: {", ".join(PIECES)}.')
  with cli.reporting_user_errors('ablation.py'):
    config = load_config(args.config)
  if unused := [p for p in only if p not in pieces_used(config)]:  # Else left out unsaid.
    parser.error(f'--only: {args.config} does not use {unused}, so there is nothing to remove; '
                 f'the pieces it uses: {", ".join(pieces_used(config)) or "none"}.')
  with cli.reporting_user_errors('ablation.py'):
    from cnnjax.runs import workdir as workdir_lib
    workdir_lib.check_script_folders(args.results_dir, args.workdir_root)
    from cnnjax import sharding
    sharding.start_backend()
  name = config.name
  args.workdir_root = args.workdir_root or os.path.join(REPO_ROOT, 'checkpoints', 'ablation',
                                                        name)
  rows = []
  with cli.running_as_tool('ablation.py'):  # Up to the pages' end: a stop waits for them.
    for key, description, overrides in runs_of(config, only):
      if key in EVALUATION_ONLY and not config.selection.monitor:  # (Else it picks epochs.)
        results = evaluate_without(args.config, key, overrides, args, rows[0]['results'])
      else:
        results = train(args.config, key, overrides, args)
      rows.append({'key': key, 'description': description, 'overrides': overrides,
                   'results': results})
    import jax
    device = (f'{jax.device_count()}x {jax.devices()[0].device_kind} '
              f'({jax.default_backend()}), {os.cpu_count()} CPU cores, {platform.platform()}, '
              f'jax {jax.__version__}')
    with atomic.refusals_reported(args.results_dir):
      os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f'{name}_ablation.md')
    with atomic.replaced_whole(path) as f:
      f.write(markdown(name, rows, args, args.epochs or config.num_epochs, device))
    with atomic.replaced_whole(os.path.join(args.results_dir, f'{name}_ablation.json')) as f:
      json.dump(rows, f, indent=2)
  exit_at_once.from_now(exit_at_once.stop_line('after the pages were written.'))
  print(f'Wrote {path}')
  return path


if __name__ == '__main__':
  main()
