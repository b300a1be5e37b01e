"""Trains a config for a few hundred steps and shows where its signal dies.

    python -m cnnjax.diagnose --config=configs/vgg_scratch.py [--steps=300] [--every=100]

At step 0 and every --every steps, prints each ReLU layer's activation mean,
std and fraction of dead units (zero for the whole batch), each layer's
gradient norm, and the loss, and flags dead layers. Nothing is written: no
workdir, no checkpoints. Config overrides work as for cnnjax.main.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps to run.')
_EVERY = flags.DEFINE_integer('every', 100, 'Report every this many steps.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from cnnjax import cli, diagnostics
  with cli.reporting_user_errors('cnnjax.diagnose'):
    for report in diagnostics.diagnose(_CONFIG.value, _STEPS.value, _EVERY.value):
      print(diagnostics.format_report(report), flush=True)


if __name__ == '__main__':
  app.run(main)
