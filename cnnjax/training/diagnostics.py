"""Where signal dies: per-layer activation statistics, gradient norms, and a collapse guard.

The study's VGG16 from scratch trained for two hours at loss ln(10) = 2.3026,
a uniform output, without anything telling its author. `CollapseGuard` watches
every run for that: a training loss that stays within a small band of ln(C)
(C classes) for many steps, and ReLU layers whose every unit is zero on a
batch. It says so, naming the symptom, the likely causes and the fixes; the
training loop warns, or with `config.stop_on_collapse` saves and stops. The
guard also stops a run at the first non-finite loss, before any checkpoint
could hold the damage. `python -m cnnjax.diagnose` prints the same statistics
for a few hundred steps.
"""
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from cnnjax.errors import UserError
from cnnjax.models.layers import DIAGNOSTICS

COLLAPSE_FIXES = (
    'configs/vgg_scratch_bn.py (BatchNorm after every conv), configs/vgg_scratch_he.py '
    '(He initialisation), configs/vgg_scratch_lr1e4.py (learning rate 1e-4)')


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN or infinite."""


class TrainingCollapsedError(UserError, RuntimeError):
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

  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, inputs, train=True,
                            rngs={'dropout': rng}, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
  loss, grads = jax.value_and_grad(loss_fn)(variables['params'])
  return loss, {'/'.join(k): jnp.linalg.norm(v) for k, v in
                traverse_util.flatten_dict(grads).items()}


def collapse_message(symptom: str) -> str:
  """What a collapse looks like, its likely causes and the configs that fix it."""
  return (f'Training looks collapsed: {symptom}. Likely causes: a learning rate too high for '
          'this depth, an initialisation that shrinks the signal layer by layer, missing '
          f'normalisation. Configs that fix it for VGG16: {COLLAPSE_FIXES}. '
          'python -m cnnjax.diagnose --config=... shows where the signal dies.')


class CollapseGuard:
  """Checks the training losses of the last steps, and the ReLUs, every few steps.

  The per-step losses stay on the device until a check: one host sync per
  `every_steps` steps (and before every checkpoint). A check returns the
  symptom of a collapse it finds (each is reported once), or None.
  """

  def __init__(self, num_classes: int, every_steps: int, patience_steps: int, loss_band: float):
    self.every_steps, self.patience_steps, self.loss_band = every_steps, patience_steps, loss_band
    self.chance_loss = math.log(num_classes)
    self._pending: list[tuple[int, jax.Array, int]] = []
    self.steps_near_chance = 0  # Consecutive steps with the loss within the band of ln(C).
    self.dead_reported: set[str] = set()

  def record(self, step: int, loss: jax.Array, steps: int = 1) -> None:
    """Keeps the (device) loss of the step that ended at `step`, or the losses of the
    `steps` steps of a call that ended there (the first `steps` of a vector)."""
    self._pending.append((step, loss, steps))

  def due(self, step: int) -> bool:
    return step % self.every_steps == 0

  def check_losses(self) -> str | None:
    """Raises NonFiniteLossError at the first bad step; the symptom of a collapse, if any."""
    ends = [(end, count) for end, _, count in self._pending]
    losses = jax.device_get([loss for _, loss, _ in self._pending])
    self._pending = []
    symptom = None
    for step, loss in ((end - count + 1 + i, float(value))
                       for (end, count), call in zip(ends, losses)
                       for i, value in enumerate(np.atleast_1d(call)[:count])):
      if not math.isfinite(loss):
        raise NonFiniteLossError(
            f'Training loss became {loss} at step {step}. The run was stopped before saving '
            'it; its last good checkpoint is kept. Lower config.learning_rate (or add '
            'config.warmup_steps) and pass --config.resume=False, which moves this run aside '
            '(a run resumes with the learning rate it started with), or check the inputs.')
      near = abs(loss - self.chance_loss) <= self.loss_band
      self.steps_near_chance = self.steps_near_chance + 1 if near else 0
      if self.steps_near_chance == self.patience_steps:
        symptom = (f'the training loss has stayed within {self.loss_band} of '
                   f'ln({round(math.exp(self.chance_loss))}) = {self.chance_loss:.4f}, a uniform '
                   f'output over the classes, for {self.patience_steps} steps (up to step {step})')
    return symptom

  def check_activations(self, stats: dict[str, dict[str, Any]], step: int) -> str | None:
    """The symptom of ReLU layers that died since the last check, if any did."""
    dead = [layer for layer in dead_layers(stats) if layer not in self.dead_reported]
    if not dead:
      return None
    self.dead_reported.update(dead)
    return (f'every unit of ReLU layer(s) {", ".join(dead)} is zero on the batch of step {step} '
            '(dead ReLUs pass no signal and no gradient)')
