"""The state of training and the pure functions that advance and measure it.

`train_step` and `eval_step` are pure: a state and a global batch in, a new
state (or metrics) out. `Trainer` jit-compiles them for one mesh, with the
state replicated and batches sharded over the 'data' axis. Frozen parameters
are kept apart from the trainable ones (see `params`). Dropout keys derive
from (seed, step), so a step is a pure function of its inputs.
"""
import functools
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics

from cnnjax import compilation
from cnnjax import sharding
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.data import pipeline
from cnnjax.training import augment as augment_lib
from cnnjax.training import diagnostics
from cnnjax.training import dispatch
from cnnjax.training import params as params_lib
from cnnjax.training import recipes


AUGMENT_STREAM = 1  # Augmentation's key: fold_in(step key, 1); dropout uses the step key.


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, so it jits and checkpoints."""
  step: jax.Array
  params: Any          # Trainable parameters: the optimizer's subtree.
  frozen_params: Any   # Parameters the stage's trainable pattern does not match.
  batch_stats: Any     # BatchNorm moving statistics ({} for models without).
  opt_state: Any
  rng: jax.Array       # Base key; step keys are fold_in(rng, step).

  @classmethod
  def of_weights(cls, variables: dict[str, Any]) -> 'TrainState':
    """A state that evaluates and predicts with `variables` (saved evaluation weights, such
    as the best epoch's) and trains nothing."""
    return cls(step=jnp.zeros((), jnp.int32), params=variables['params'], frozen_params={},
               batch_stats=variables.get('batch_stats', {}), opt_state=(),
               rng=jax.random.PRNGKey(0))

  @property
  def variables(self) -> dict[str, Any]:
    """The weights being trained."""
    return self._variables(self.params)

  @property
  def evaluation_variables(self) -> dict[str, Any]:
    """The weights that evaluate and predict: the EMA of the parameters where the optimizer
    keeps one (config.ema_decay), else the parameters themselves."""
    ema = recipes.ema_params(self.opt_state)
    return self._variables(self.params if ema is None else ema)

  def _variables(self, params: Any) -> dict[str, Any]:
    variables = {'params': params_lib.merge(params, self.frozen_params)}
    if self.batch_stats:
      variables['batch_stats'] = self.batch_stats
    return variables


def _model_inputs(images: jax.Array, part: str) -> tuple[jax.Array, dict[str, str]]:
  """What the model gets: [0, 1] pixels, or cached backbone features for its head."""
  if part == 'all':
    return pipeline.to_inputs(images), {}
  return images, {'part': part}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Per-example cross-entropy against the labels, smoothed (optax) when asked."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, running: Metrics,
               *, model: nn.Module, tx: optax.GradientTransformation, part: str = 'all',
               augmentation: augment_lib.Augmentation = augment_lib.Augmentation(),
               label_smoothing: float = 0.0, feeds_loss: bool = False
               ) -> tuple[TrainState, Metrics, jax.Array]:
  """One optimizer step on a global batch; folds the batch's metrics into `running`.

  Returns the new state, the running metrics and the batch's mean loss (for the
  collapse guard). `part='head'`: `images` are cached backbone features.
  Augmentation draws from a key of its own, derived from the step's. `feeds_loss`: the
  optimizer reads the batch's loss (reduce-on-plateau).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  inputs, part_kwargs = _model_inputs(images, part)
  if augmentation.active:
    inputs = augment_lib.augment(jax.random.fold_in(dropout_rng, AUGMENT_STREAM), inputs,
                                 augmentation)

  def loss_fn(trainable):
    variables = {'params': params_lib.merge(trainable, state.frozen_params)}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    logits, updates = model.apply(variables, inputs, train=True, rngs={'dropout': dropout_rng},
                                  mutable=['batch_stats'], **part_kwargs)
    logits = logits.astype(jnp.float32)  # Loss and metrics in float32 under half precision.
    loss = cross_entropy(logits, labels, label_smoothing)
    return loss.mean(), (loss, logits, updates.get('batch_stats', {}))

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  extra = {'value': loss.mean()} if feeds_loss else {}
  updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)
  batch_metrics = Metrics.single_from_model_output(loss=loss, logits=logits, labels=labels)
  return new_state, running.merge(batch_metrics), loss.mean()


def in_chunks(fun: Callable[[jax.Array], jax.Array], inputs: jax.Array,
              chunk_size: int | None) -> jax.Array:
  """`fun(inputs)` for a `fun` that treats each example on its own, run over chunks of at
  most `chunk_size` examples one after the other (`lax.map`; the last chunk zero-padded)."""
  size = len(inputs)
  if not chunk_size or size <= chunk_size:
    return fun(inputs)
  chunks = -(-size // chunk_size)
  chunk = -(-size // chunks)  # Even chunks: 250 goes as 5 x 50, 256 as 6 x 43 (2 padding).
  padded = jnp.pad(inputs, [(0, chunks * chunk - size)] + [(0, 0)] * (inputs.ndim - 1))
  outputs = jax.lax.map(fun, padded.reshape((chunks, chunk) + inputs.shape[1:]))
  return outputs.reshape((chunks * chunk,) + outputs.shape[2:])[:size]


def evaluation_logits(state: TrainState, images: jax.Array, *, model: nn.Module,
                      part: str = 'all',
                      test_views: augment_lib.TestViews = augment_lib.TestViews(),
                      chunk_size: int | None = None) -> jax.Array:
  """float32 logits of a batch as the run is evaluated: its evaluation weights, the mean
  over the test-time views (`augment.test_logits`). `chunk_size`: the model sees the batch
  in chunks of this many examples (`in_chunks`)."""
  inputs, part_kwargs = _model_inputs(images, part)
  variables = state.evaluation_variables
  return in_chunks(functools.partial(
      augment_lib.test_logits, lambda x: model.apply(variables, x, train=False, **part_kwargs),
      views=test_views), inputs, chunk_size)


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
              *, model: nn.Module, part: str = 'all',
              test_views: augment_lib.TestViews = augment_lib.TestViews(),
              chunk_size: int | None = None
              ) -> tuple[Metrics, jax.Array, jax.Array, jax.Array]:
  """Metrics of a (padded) batch, counting only `mask`ed examples, its predictions, labels
  and mask (gathered: each process has only its rows of the batch, the report needs all)."""
  logits = evaluation_logits(state, images, model=model, part=part, test_views=test_views,
                             chunk_size=chunk_size)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  batch_metrics = Metrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, mask=mask)
  return batch_metrics, jnp.argmax(logits, -1), labels, mask


def activation_statistics(state: TrainState, images: jax.Array, *, model: nn.Module,
                          part: str = 'all') -> dict[str, dict[str, jax.Array]]:
  """Every ReLU layer's output statistics on a batch (see `diagnostics`)."""
  inputs, part_kwargs = _model_inputs(images, part)
  return diagnostics.activation_statistics(model, state.variables, inputs, **part_kwargs)


def as_floats(computed: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in computed.items()}


def host_concatenate(arrays: list[jax.Array]) -> np.ndarray:
  """Replicated per-batch outputs as one host array."""
  return np.concatenate([np.asarray(jax.device_get(a)) for a in arrays])


class Trainer:
  """The jitted steps of one training stage, compiled for one mesh."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
               eval_batch_size: int, part: str = 'all',
               augmentation: augment_lib.Augmentation = augment_lib.Augmentation(),
               label_smoothing: float = 0.0,
               test_views: augment_lib.TestViews = augment_lib.TestViews(),
               feeds_loss: bool = False):
    self.model, self.tx, self.mesh, self.part = model, tx, mesh, part
    # Evaluation pads its last batch, so any batch size counts every example once: the one
    # asked for is rounded up to split over the devices (and never exceeds what a split needs).
    self.eval_batch_size = sharding.round_up_to_devices(eval_batch_size)
    replicated = sharding.replicated(mesh)
    step = functools.partial(train_step, model=model, tx=tx, part=part,
                             augmentation=augmentation, label_smoothing=label_smoothing,
                             feeds_loss=feeds_loss)
    self.train_step = compilation.jit(step, out_shardings=(replicated, replicated, replicated),
                                      donate_argnums=(0, 3))
    # Several steps per call (`dispatch`): batches stacked on a leading axis.
    self.train_steps = compilation.jit(functools.partial(dispatch.train_steps, step=step),
                                       out_shardings=(replicated, replicated, replicated),
                                       donate_argnums=(0, 3))
    self.activation_statistics = compilation.jit(
        functools.partial(activation_statistics, model=model, part=part),
        out_shardings=replicated)
    # Predictions and labels come back replicated: every process can read all of them.
    # Cached features go through a dense head: chunks pay off for convolutions only.
    chunk_size = compilation.eval_chunk_size() if part == 'all' else None
    evaluation = dict(model=model, part=part, test_views=test_views, chunk_size=chunk_size)
    self.eval_step = compilation.jit(functools.partial(eval_step, **evaluation),
                                     out_shardings=(replicated,) * 4)
    self.evaluation_logits = compilation.jit(
        functools.partial(evaluation_logits, **evaluation), out_shardings=replicated)

  def empty_metrics(self) -> Metrics:
    return jax.device_put(Metrics.empty(), sharding.replicated(self.mesh))

  def evaluate(self, state: TrainState, split: Split | StreamedSplit
               ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Loss/accuracy over every example of `split` once, the predicted classes and the
    labels (a streamed split has no labels until it is read), of the examples counted: a
    streamed example that could not be decoded is left out of all three."""
    total = Metrics.empty()
    predictions, labels, masks = [], [], []
    for batch in self._evaluation_batches(split):
      batch_metrics, predicted, batch_labels, mask = self.eval_step(state, *batch)
      total = total.merge(batch_metrics)
      predictions.append(predicted)
      labels.append(batch_labels)
      masks.append(mask)
    counted = host_concatenate(masks)
    predicted, labels = (host_concatenate(arrays)[counted] for arrays in (predictions, labels))
    return as_floats(total.compute()), predicted, labels

  def probabilities(self, state: TrainState, images: np.ndarray) -> np.ndarray:
    """Class probabilities of uint8 `images` (N, H, W, C): the softmax of the logits the
    run's evaluation computes, a batch of `eval_batch_size` at a time."""
    split = Split(images, np.zeros(len(images), np.int32))
    rows = [np.asarray(jax.device_get(jax.nn.softmax(self.evaluation_logits(state, batch))))
            for batch, _, _ in self._evaluation_batches(split)]
    return np.concatenate(rows)[:len(split)]

  def _evaluation_batches(self, split: Split | StreamedSplit
                          ) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """(images, labels, mask) on the devices, covering each example of `split` once, in
    batches of `eval_batch_size` (fewer where the split needs fewer)."""
    batch_size = min(self.eval_batch_size, sharding.round_up_to_devices(len(split)))
    for batch in pipeline.eval_batches(split, batch_size, self.mesh):
      yield sharding.put_global_batch(self.mesh, batch)
