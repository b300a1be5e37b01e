"""Training recipes beyond the studies' constant-rate Adam, all from optax.

A stage's optimizer is `create_optimizer(stage_learning_rate, steps, recipe)`:
global-norm gradient clipping, then Adam (as Keras or optax computes it),
AdamW (decoupled weight decay) or SGD with Nesterov momentum (weight decay
added to the gradient), at a learning rate that follows a schedule over the
stage's `steps`. Weight decay skips biases and normalisation parameters
(`decay_mask`: only kernels, the parameters of rank 2 and up, decay). With
`ema_decay`, the optimizer state also holds an EMA of the parameters, which
evaluation then uses (`ema_params`). The defaults are the studies' recipe:
constant-rate Keras Adam, nothing else.
"""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnnjax.training import optimizers

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'warmup_cosine', 'onecycle', 'piecewise', 'plateau')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The optimisation fields of a config (see configs/default.py)."""
  optimizer: str = 'adam'
  adam_epsilon: float = 1e-7
  adam_update: str = 'keras'
  momentum: float = 0.9
  weight_decay: float = 0.0
  grad_clip_norm: float = 0.0
  schedule: str = 'constant'
  warmup_steps: int = 0
  lr_boundaries: tuple[float, ...] = (0.5, 0.75)
  lr_decay_factor: float = 0.1
  plateau_patience: int = 3
  ema_decay: float = 0.0

  @property
  def feeds_loss(self) -> bool:
    """Whether the optimizer reads each step's loss (reduce-on-plateau does)."""
    return self.schedule == 'plateau'

  @classmethod
  def from_config(cls, config) -> 'Recipe':
    values = {field.name: config[field.name] for field in dataclasses.fields(cls)}
    return cls(**{**values, 'lr_boundaries': tuple(values['lr_boundaries'])})


def learning_rate(recipe: Recipe, peak: float, steps: int) -> optax.ScalarOrSchedule:
  """The learning rate over a stage of `steps` steps, peaking at `peak`.

  constant: `peak`, after `warmup_steps` of linear warmup from 0 if any;
  warmup_cosine: linear warmup, then cosine decay to 0 at the last step;
  onecycle: optax's one-cycle (up for 30% of the steps, then down to ~0);
  piecewise: `peak`, times `lr_decay_factor` at each of `lr_boundaries` (fractions of steps);
  plateau: as constant here; `create_optimizer` adds the reduction.
  """
  steps = max(steps, recipe.warmup_steps + 1)  # (Restoring builds it with nominal steps.)
  if recipe.schedule in ('constant', 'plateau'):
    return optax.linear_schedule(0.0, peak, recipe.warmup_steps) if recipe.warmup_steps else peak
  if recipe.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, recipe.warmup_steps, steps, 0.0)
  if recipe.schedule == 'onecycle':
    return optax.cosine_onecycle_schedule(steps, peak)
  if recipe.schedule == 'piecewise':
    return optax.piecewise_constant_schedule(
        peak, {int(round(b * steps)): recipe.lr_decay_factor for b in recipe.lr_boundaries})
  raise ValueError(f'Unknown schedule {recipe.schedule!r}; expected one of {SCHEDULES}.')


def decay_mask(params: Any) -> Any:
  """True for the parameters weight decay applies to: kernels, not biases or norms' scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class EmaState(NamedTuple):
  """The exponential moving average of the trainable parameters, after `count` updates."""
  count: jax.Array
  ema: Any


def ema_decay_at(decay: float, count: jax.Array) -> jax.Array:
  """The decay of update number `count` (from 0): `decay`, warmed up as TensorFlow's
  ExponentialMovingAverage(num_updates) does, min(decay, (1 + count) / (10 + count)), so the
  early average follows the weights instead of holding on to their random initialisation
  (which their BatchNorm statistics no longer fit)."""
  return jnp.minimum(decay, (1.0 + count) / (10.0 + count))


def params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an EMA of the parameters (started at their initial values, with a warmed-up
  decay: see `ema_decay_at`) in the optimizer state, leaving the updates as they are:
  checkpointed and restored with the rest of the optimizer state, and started afresh by a
  new stage."""
  def init(params):  # A copy: the training step donates the parameters' buffers.
    return EmaState(jnp.zeros((), jnp.int32),
                    jax.tree.map(lambda p: jnp.array(p, copy=True), params))

  def update(updates, state, params):
    rate = 1 - ema_decay_at(decay, state.count.astype(jnp.float32))
    ema = jax.tree.map(lambda new, old: (rate * new + (1 - rate) * old).astype(old.dtype),
                       optax.apply_updates(params, updates), state.ema)
    return updates, EmaState(state.count + 1, ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
  """The EMA of the parameters an optimizer with `params_ema` holds (else None)."""
  last = opt_state[-1] if isinstance(opt_state, tuple) and opt_state else None
  return last.ema if isinstance(last, EmaState) else None


def create_optimizer(recipe: Recipe, peak_learning_rate: float, steps: int,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """A stage's optimizer: `recipe` at `peak_learning_rate` over `steps` steps.

  'plateau' multiplies the updates by `lr_decay_factor` when the training loss, averaged
  over each epoch, has not improved for `plateau_patience` epochs (optax.contrib's
  reduce_on_plateau; the step passes it the loss, see `Recipe.feeds_loss`).
  """
  rate = learning_rate(recipe, peak_learning_rate, steps)
  if recipe.optimizer == 'adam':
    tx = optimizers.adam(rate, recipe.adam_epsilon, recipe.adam_update)
  elif recipe.optimizer == 'adamw':
    tx = optax.adamw(rate, eps=recipe.adam_epsilon, weight_decay=recipe.weight_decay,
                     mask=decay_mask)
  elif recipe.optimizer == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(recipe.weight_decay, decay_mask) if recipe.weight_decay
        else optax.identity(),
        optax.sgd(rate, momentum=recipe.momentum, nesterov=True))
  else:
    raise ValueError(f'Unknown optimizer {recipe.optimizer!r}; expected one of {OPTIMIZERS}.')
  if recipe.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(recipe.grad_clip_norm), tx)
  if recipe.feeds_loss:
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=recipe.lr_decay_factor, patience=recipe.plateau_patience,
        accumulation_size=steps_per_epoch))
  if recipe.ema_decay:  # Last: it averages the parameters as the final updates leave them.
    tx = optax.chain(tx, params_ema(recipe.ema_decay))
  return tx
