"""Where signal dies: per-layer activation statistics, gradient norms, and a collapse guard.

The study's VGG16 from scratch trained for two hours at loss ln(10) = 2.3026,
a uniform output, without anything telling its author. `CollapseGuard` watches
every run for that: a training loss that stays within a small band of ln(C)
(C classes) for many steps, and ReLU layers whose every unit is zero on a
batch. It warns, naming the symptom, the likely causes and the fixes, and
with `config.stop_on_collapse` stops the run. It also stops a run at the
first non-finite loss, before any checkpoint could hold the damage.
`python -m cnnjax.diagnose` prints the same statistics for a few hundred steps.
"""
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from cnnjax.models.layers import DIAGNOSTICS

COLLAPSE_FIXES = (
    'configs/vgg_scratch_bn.py (BatchNorm after every conv), configs/vgg_scratch_he.py '
    '(He initialisation), configs/vgg_scratch_lr1e4.py (learning rate 1e-4)')


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


class TrainingCollapsedError(RuntimeError):
  """Training stopped because it had collapsed (config.stop_on_collapse)."""


def activation_statistics(model, variables: dict[str, Any], inputs: jax.Array,
                          **apply_kwargs) -> dict[str, dict[str, jax.Array]]:
  """{'backbone/block1_conv1_relu': {'mean', 'std', 'dead_fraction'}} for every ReLU."""
  _, sown = model.apply(variables, inputs, train=False, mutable=[DIAGNOSTICS], **apply_kwargs)
  flat = traverse_util.flatten_dict(sown.get(DIAGNOSTICS, {}))
  # (..., layer, 'activations') -> a one-element tuple holding the layer's statistics.
  return {'/'.join(path[:-1]): value[0] for path, value in flat.items()}


def dead_layers(stats: dict[str, dict[str, Any]]) -> list[str]:
  """ReLU layers whose every unit was zero for the whole batch."""
  return [layer for layer, s in stats.items() if float(s['dead_fraction']) >= 1.0]


def loss_and_gradient_norms(model, variables: dict[str, Any], inputs: jax.Array,
                            labels: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
  """The batch loss and the L2 norm of every parameter's gradient ('layer/kernel': norm)."""
  import optax

  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, inputs, train=True,
                            rngs={'dropout': rng}, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
  loss, grads = jax.value_and_grad(loss_fn)(variables['params'])
  return loss, {'/'.join(k): jnp.linalg.norm(v) for k, v in
                traverse_util.flatten_dict(grads).items()}


class CollapseGuard:
  """Checks the training losses of the last steps, and the ReLUs, every few steps.

  The per-step losses stay on the device until a check: one host sync per
  `config.collapse_guard.every_steps` steps (and before every checkpoint).
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, announce):
    guard = config.collapse_guard
    self.every_steps, self.patience_steps = guard.every_steps, guard.patience_steps
    self.loss_band, self.stop = guard.loss_band, config.stop_on_collapse
    self.chance_loss = math.log(num_classes)
    self.announce = announce
    self._pending: list[tuple[int, jax.Array]] = []
    self.steps_near_chance = 0  # Consecutive steps with the loss within the band of ln(C).
    self.warned: set[str] = set()

  def record(self, step: int, loss: jax.Array) -> None:
    """Keeps the (device) loss of the step that ended at `step`."""
    self._pending.append((step, loss))

  def due(self, step: int) -> bool:
    return step % self.every_steps == 0

  def check_losses(self) -> None:
    """Raises NonFiniteLossError at the first bad step; warns (or stops) on a collapse."""
    steps = [step for step, _ in self._pending]
    losses = jax.device_get([loss for _, loss in self._pending])
    self._pending = []
    for step, loss in zip(steps, losses):
      loss = float(loss)
      if not math.isfinite(loss):
        raise NonFiniteLossError(
            f'Training loss became {loss} at step {step}. The run was stopped before saving '
            'it; its last good checkpoint is kept. Lower config.learning_rate (or add '
            'config.warmup_steps) or check the inputs.')
      near = abs(loss - self.chance_loss) <= self.loss_band
      self.steps_near_chance = self.steps_near_chance + 1 if near else 0
      if self.steps_near_chance == self.patience_steps:
        self._collapsed(
            f'the training loss has stayed within {self.loss_band} of ln({round(math.exp(self.chance_loss))}) = '
            f'{self.chance_loss:.4f}, a uniform output over the classes, for '
            f'{self.patience_steps} steps (up to step {step})', step)

  def check_activations(self, stats: dict[str, dict[str, Any]], step: int) -> None:
    dead = [layer for layer in dead_layers(stats) if layer not in self.warned]
    if dead:
      self.warned.update(dead)
      self._collapsed(f'every unit of ReLU layer(s) {", ".join(dead)} is zero on the batch of '
                      f'step {step} (dead ReLUs pass no signal and no gradient)', step)

  def _collapsed(self, symptom: str, step: int) -> None:
    message = (f'Training looks collapsed: {symptom}. Likely causes: a learning rate too high '
               'for this depth, an initialisation that shrinks the signal layer by layer, '
               f'missing normalisation. Configs that fix it for VGG16: {COLLAPSE_FIXES}. '
               'python -m cnnjax.diagnose --config=... shows where the signal dies.')
    logging.warning('%s', message)
    self.announce(f'WARNING: {message}')
    if self.stop:
      raise TrainingCollapsedError(
          f'{message} Stopped at step {step} (config.stop_on_collapse); the state at this '
          'step is saved, so the same command continues the run.')


def diagnose(config: ml_collections.ConfigDict, steps: int, every: int):
  """Trains `config` for `steps` steps; yields a per-layer report at step 0 and every `every`."""
  import numpy as np
  from cnnjax import compilation, config_validation, datasets, input_pipeline, sharding, train
  config_validation.validate_config(config)
  data = datasets.load_dataset(config.dataset, config.train_split, '', config.test_split,
                               config.local_data_dir, config.tfds_data_dir)
  mesh = sharding.create_mesh()
  model = train.create_model(config, data.num_classes)
  tx = train.create_optimizer(config)
  replicated = sharding.replicated(mesh)
  state = jax.device_put(train.create_train_state(config, model, data.image_shape, tx),
                         replicated)
  trainer = train.Trainer(config, model, tx, mesh)
  gradients = compilation.jit(lambda variables, x, y, rng: loss_and_gradient_norms(
      model, variables, input_pipeline.to_inputs(x), y, rng))
  running = jax.device_put(train.Metrics.empty(), replicated)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(data.train), config.batch_size)
  step = 0
  while True:
    epoch = step // steps_per_epoch
    for batch in input_pipeline.train_batches(data.train, config.batch_size, config.seed, epoch,
                                              first_step=step % steps_per_epoch):
      images, labels = sharding.put_global_batch(mesh, batch)
      if step % every == 0 or step == steps:
        stats = jax.device_get(trainer.activation_statistics(state, images))
        loss, norms = jax.device_get(gradients(state.variables, images, labels,
                                               jax.random.fold_in(state.rng, state.step)))
        yield {'step': step, 'loss': float(loss), 'chance_loss': math.log(data.num_classes),
               'activations': {k: {s: float(v) for s, v in d.items()} for k, d in stats.items()},
               'gradient_norms': {k: float(np.asarray(v)) for k, v in norms.items()},
               'dead_layers': dead_layers(stats)}
      if step == steps:
        return
      state, running, _ = trainer.train_step(state, images, labels, running)
      step += 1


def format_report(report: dict[str, Any]) -> str:
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
    lines.append(f"  Dead ReLU layers: {', '.join(report['dead_layers'])}. Fixes: {COLLAPSE_FIXES}.")
  return '\n'.join(lines)
