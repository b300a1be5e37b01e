"""Runs one experiment: `python -m cnnjax.main --config=configs/cnn_simple.py`.

Flags: --config (an ml_collections config file; fields can be overridden as
--config.batch_size=128) and --workdir (default checkpoints/<config.name>).
Everything else lives in importable modules (see cnnjax.train).
"""
if __name__ == '__main__':  # From the first moment: the imports and flags take a second.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(exit_at_once.NOTHING_STARTED))

import logging  # pylint: disable=wrong-import-position
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from cnnjax import cli
from cnnjax.runs import exit_at_once

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run directory (default: checkpoints/<config.name>).')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Join a multi-process run with jax.distributed.initialize() (TPU pod '
    'slices find their peers themselves; elsewhere also pass the three flags below).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, e.g. 10.0.0.1:1234.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index, 0-based.")
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  cli.quiet_console_by_default()
  # Errors in what the user gave us: one clear line, no traceback. A stop signal from here
  # on, imports included, ends in one line too (see cnnjax.cli.running_as_tool).
  try:
    with cli.running_as_tool('cnnjax'):
      # Imported after flags: keeps --help fast.
      from cnnjax import sharding
      from cnnjax import train
      from configs import default
      sharding.check_multiprocess_flags(_MULTIHOST.value, _COORDINATOR.value,
                                        _NUM_PROCESSES.value, _PROCESS_ID.value)
      if _MULTIHOST.value:
        sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
      sharding.start_backend()
      config = _CONFIG.value
      workdir = _WORKDIR.value or os.path.join('checkpoints', config.name)
      logging.info('Experiment %s in %s', config.name, os.path.abspath(workdir))
      train.train_and_evaluate(config, workdir, default.get_config())  # Validates first.
  finally:  # Ended, whichever way: a signal while the process winds down stops nothing.
    exit_at_once.from_now(exit_at_once.stop_line('after the run ended: what it saved stands.'))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before anything imports TensorFlow.
  from configs import default as config_defaults
  app.run(main, flags_parser=cli.flags_parser('cnnjax', config_defaults.get_config))
