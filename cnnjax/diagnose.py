"""Trains a config for a few hundred steps and shows where its signal dies.

    python -m cnnjax.diagnose --config=configs/vgg_scratch.py [--steps=300] [--every=100]

At step 0 and every --every steps, prints each ReLU layer's activation mean,
std and fraction of dead units (zero for the whole batch), each layer's
gradient norm, and the loss, and flags dead layers. Nothing is written: no
workdir, no checkpoints. Config overrides work as for cnnjax.main.
"""
if __name__ == '__main__':  # From the first moment: the imports and flags take a second.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(exit_at_once.WRITES_NOTHING))

import dataclasses  # pylint: disable=wrong-import-position
import math
import os
from typing import Any, Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from cnnjax import cli
from cnnjax.runs import exit_at_once

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps to run.', lower_bound=0)
_EVERY = flags.DEFINE_integer('every', 100, 'Report every this many steps.', lower_bound=1)
flags.mark_flags_as_required(['config'])


class _Finished(Exception):
  """The last report is made: the diagnosis is over."""


def diagnose(config, defaults, steps: int, every: int,
             on_report: Callable[[dict[str, Any]], None]) -> None:
  """Trains `config` for `steps` steps in the training loop; hands `on_report` a per-layer
  report at step 0, every `every` steps and at the last step, each on the batch about to be
  trained."""
  import jax
  import numpy as np
  from cnnjax import compilation, config_validation, sharding
  from cnnjax.data import datasets, pipeline
  from cnnjax.training import diagnostics, setup
  from cnnjax.training.loop import Hook, Loop
  config_validation.validate_config(config, defaults)
  options = datasets.DataOptions.from_config(config)
  data = datasets.load_dataset(dataclasses.replace(options, val_split=''))
  experiment = setup.build(config, data.image_shape, data.num_classes)
  mesh = sharding.create_mesh()
  trainer = experiment.trainer(0, mesh, config.eval_batch_size, on_features=False,
                               steps_per_epoch=pipeline.steps_per_epoch(len(data.train),
                                                                        config.batch_size))
  gradients = compilation.jit(lambda variables, x, y, rng: diagnostics.loss_and_gradient_norms(
      trainer.model, variables, pipeline.to_inputs(x), y, rng))

  class ReportHook(Hook):
    def before_step(self, loop, images, labels):
      if loop.step % every and loop.step != steps:
        return
      state = loop.state
      stats = jax.device_get(trainer.activation_statistics(state, images))
      loss, norms = jax.device_get(gradients(state.variables, images, labels,
                                             jax.random.fold_in(state.rng, state.step)))
      on_report({'step': loop.step, 'loss': float(loss),
                 'chance_loss': math.log(data.num_classes),
                 'activations': {k: {s: float(v) for s, v in d.items()} for k, d in stats.items()},
                 'gradient_norms': {k: float(np.asarray(v)) for k, v in norms.items()},
                 'dead_layers': diagnostics.dead_layers(stats)})
      if loop.step == steps:
        raise _Finished

  state = jax.device_put(
      experiment.initial_state(experiment.init_from_data(experiment.variables, data.train)),
      sharding.replicated(mesh))
  loop = Loop(state, trainer.empty_metrics(), mesh=mesh, batch_size=config.batch_size,
              seed=config.seed, hooks=[ReportHook()],
              steps_per_epoch=pipeline.steps_per_epoch(len(data.train), config.batch_size))
  try:
    loop.run(trainer, data, steps + 1)  # Step `steps` is reported, not trained.
  except _Finished:
    pass


def format_report(report: dict[str, Any]) -> str:
  from cnnjax.training.diagnostics import COLLAPSE_FIXES
  lines = [f"step {report['step']}: loss {report['loss']:.4f} (ln C = "
           f"{report['chance_loss']:.4f})",
           f"  {'ReLU layer':44s} {'mean':>10s} {'std':>10s} {'dead units':>10s}"]
  for layer, s in report['activations'].items():
    flag = '  <- DEAD' if layer in report['dead_layers'] else ''
    lines.append(f"  {layer:44s} {s['mean']:10.3g} {s['std']:10.3g} "
                 f"{100 * s['dead_fraction']:9.1f}%{flag}")
  lines.append(f"  {'parameter':44s} {'gradient norm':>14s}")
  lines += [f'  {name:44s} {norm:14.3g}' for name, norm in report['gradient_norms'].items()]
  if report['dead_layers']:
    lines.append(f"  Dead ReLU layers: {', '.join(report['dead_layers'])}. "
                 f'Fixes: {COLLAPSE_FIXES}.')
  return '\n'.join(lines)


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  cli.quiet_console_by_default()
  from configs import default
  with cli.running_as_tool('cnnjax.diagnose', exit_at_once.WRITES_NOTHING):
    from cnnjax import sharding
    sharding.start_backend()
    diagnose(_CONFIG.value, default.get_config(), _STEPS.value, _EVERY.value,
             lambda report: print(format_report(report), flush=True))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before anything imports TensorFlow.
  from configs import default as config_defaults
  app.run(main, flags_parser=cli.flags_parser('cnnjax.diagnose', config_defaults.get_config))
