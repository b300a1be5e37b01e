"""Evaluation in chunks (CPU): the same logits, metrics and predictions as in one go."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import compilation
from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import pipeline
from cnnjax.training import augment
from cnnjax.training import steps
from tests.helpers import experiment, load_config, streamed_with_unreadable


@pytest.mark.parametrize('size,chunk_size,expected_chunk', [
    (250, 50, 50), (256, 50, 43), (7, 50, 7), (50, 50, 50), (51, 50, 26)])
def test_in_chunks_equals_one_call_on_every_example(size, chunk_size, expected_chunk):
  """Even chunks, the last zero-padded; padding rows never reach the output."""
  inputs = jnp.arange(size * 3, dtype=jnp.float32).reshape(size, 3) + 1
  seen = []

  def per_example(x):
    seen.append(x.shape[0])  # Recorded while tracing: the chunk size the model sees.
    return jnp.stack([x.sum(-1), x.max(-1)], -1) * 2

  out = steps.in_chunks(per_example, inputs, chunk_size)
  np.testing.assert_array_equal(out, jnp.stack([inputs.sum(-1), inputs.max(-1)], -1) * 2)
  assert seen == [expected_chunk]


@pytest.mark.parametrize('name,overrides', [
    ('cnn_deep', {}),
    # Test-time views inside each chunk: flips, and shifts with reflected padding.
    ('cifar10_best', {'augment.translate_test': 2,
                      'model_kwargs.block_features': (8, 16, 16)})])
def test_evaluation_in_chunks_gives_the_whole_batch_logits(name, overrides):
  """An evaluation step over a padded split: with chunks, the predictions and metrics of the
  model (and its test-time views) applied to all the images at once."""
  config = load_config(name)
  config.eval_batch_size = 128  # Three chunks of 43 (one of padding); 263 = 128 + 128 + 7.
  config.update_from_flattened_dict(overrides)
  exp = experiment(config)
  mesh = sharding.create_mesh()
  state = jax.device_put(exp.initial_state(), sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  n = 263
  image_shape = tuple(datasets.describe(datasets.DataOptions.from_config(config)).image_shape)
  split = datasets.Split(rng.integers(0, 256, (n,) + image_shape, dtype=np.uint8),
                         rng.integers(0, 10, n).astype(np.int32))
  trainer = exp.trainer(0, mesh, config.eval_batch_size)
  batch = sharding.put_global_batch(mesh, next(iter(
      pipeline.eval_batches(split, trainer.eval_batch_size, mesh))))
  lowered = trainer.eval_step.lower(state, *batch).as_text()
  assert ('while' in lowered) == (compilation.eval_chunk_size() is not None)
  metrics, predicted, labels = trainer.evaluate(state, split)
  variables = state.evaluation_variables
  logits = augment.test_logits(lambda x: exp.model.apply(variables, x),
                               split.images / np.float32(255.0), exp.test_views)
  np.testing.assert_array_equal(labels, split.labels)
  np.testing.assert_array_equal(predicted, np.argmax(logits, -1))
  log_probs = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
  expected_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), split.labels[:, None], 1))
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
  assert round(metrics['accuracy'] * n) == np.sum(predicted == split.labels)


def test_a_streamed_example_that_cannot_be_decoded_is_left_out_of_the_evaluation():
  """Its stand-in fills the batch but counts nowhere: the metrics, predictions and labels
  of the split without it (one broken example in a middle batch, one that is the last
  example, whose stand-in wraps round to the first)."""
  config = load_config('cnn_simple')
  exp = experiment(config)
  mesh = sharding.create_mesh()
  state = jax.device_put(exp.initial_state(), sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  n, broken = 21, (9, 20)
  held = datasets.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                        rng.integers(0, 10, n).astype(np.int32))
  streamed = streamed_with_unreadable(held, broken, workers=2)
  readable = np.setdiff1d(np.arange(n), broken)
  without = datasets.Split(held.images[readable], held.labels[readable])
  trainer = exp.trainer(0, mesh, 8)
  metrics, predicted, labels = trainer.evaluate(state, streamed)
  expected_metrics, expected_predicted, expected_labels = trainer.evaluate(state, without)
  np.testing.assert_array_equal(labels, expected_labels)
  np.testing.assert_array_equal(predicted, expected_predicted)
  assert metrics['accuracy'] == expected_metrics['accuracy']
  np.testing.assert_allclose(metrics['loss'], expected_metrics['loss'], rtol=1e-6)
