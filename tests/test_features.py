"""Cached backbone features: the same training as without them, refused where it would differ."""
import json
import os

import jax
import numpy as np
import pytest

from cnnjax.errors import ConfigError
from tests.helpers import (assert_same_run, defaults, final_state, load_config, read_jsonl,
                           shrink, train_and_evaluate, validate)


def test_cached_features_train_like_the_images(tmp_path, mock_tfds):
  plain, cached = str(tmp_path / 'plain'), str(tmp_path / 'cached')
  results_plain = train_and_evaluate(shrink(load_config('vgg_transfer_preprocessed')), plain)
  config = shrink(load_config('vgg_transfer_fast'))
  results_cached = train_and_evaluate(config, cached)
  assert results_cached['feature_cache_seconds'] > 0
  assert 'feature_cache_seconds' not in results_plain
  np.testing.assert_allclose(results_cached['test_loss'], results_plain['test_loss'], rtol=1e-5)
  rows_plain, rows_cached = (read_jsonl(os.path.join(w, 'metrics.jsonl')) for w in (plain, cached))
  np.testing.assert_allclose(rows_cached[0]['train_loss'], rows_plain[0]['train_loss'], rtol=1e-5)
  state_plain, state_cached = (jax.device_get(final_state(config, w)) for w in (plain, cached))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state_cached.params, state_plain.params)
  jax.tree.map(np.testing.assert_array_equal, state_cached.frozen_params,
               state_plain.frozen_params)
  # A cached run's checkpoint evaluates on images, as the run's own test evaluation did.
  from cnnjax import evaluate
  evaluation = evaluate.evaluate(cached, defaults())
  np.testing.assert_allclose(evaluation['loss'], results_cached['test_loss'], rtol=1e-5)


def two_stage_fast_config(steps):
  config = shrink(load_config('cifar_mobilenet_transfer_fast'),
                  **{'num_train_steps': steps, 'num_epochs': 1})
  config.fine_tune.num_epochs = 1
  return config


def test_fine_tuning_after_a_cached_stage_runs_on_images_and_resumes_exactly(tmp_path, mock_tfds):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  results = train_and_evaluate(two_stage_fast_config(6), straight)
  assert [r['stage'] for r in read_jsonl(os.path.join(straight, 'metrics.jsonl'))] == [
      'transfer', 'fine_tune']
  assert results['feature_cache_seconds'] > 0
  train_and_evaluate(two_stage_fast_config(3), resumed)
  train_and_evaluate(two_stage_fast_config(6), resumed)
  assert_same_run(straight, resumed, two_stage_fast_config(6))
  assert json.loads(open(os.path.join(resumed, 'results.json')).read())['steps'] == 6


def test_a_signal_while_caching_features_stops_after_that_batch(tmp_path, mock_tfds,
                                                              monkeypatch, capsys):
  """VGG16's features of Fashion-MNIST take tens of minutes on a CPU, before the first step,
  and the console said nothing of them: a signal then stopped the run only once every
  feature was computed and a step trained. They are shown, and a signal stops them."""
  import signal
  from cnnjax.runs import hooks
  from cnnjax.runs import preemption
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  config = two_stage_fast_config(6)
  monkeypatch.setattr(hooks, 'PROGRESS_LINE_SECONDS', 0.0)  # Lines at 25, 50, 75%.
  train_and_evaluate(config, straight)
  out = capsys.readouterr().out
  announced = [line for line in out.splitlines() if 'Caching the frozen' in line]
  assert len(announced) == 1, out
  total = int(announced[0].split(' features of ')[1].split()[0].replace(',', ''))
  lines = [line for line in out.splitlines() if line.startswith('  Caching features: ')]
  assert len(lines) == 3 and all(f'/{total} images, ' in line for line in lines), out
  batches = []
  update = hooks.PassProgress.update

  def signalled_at_the_first_batch(self, count, metrics=None):
    batches.append(count)
    if len(batches) == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return update(self, count, metrics)

  with monkeypatch.context() as patch:
    patch.setattr(hooks.PassProgress, 'update', signalled_at_the_first_batch)
    with pytest.raises(preemption.StopRequested,
                       match='SIGTERM while caching the backbone features: nothing new'):
      train_and_evaluate(config, stopped)
  assert len(batches) == 1
  assert not os.path.exists(os.path.join(stopped, 'results.json'))
  train_and_evaluate(config, stopped)
  assert_same_run(straight, stopped, config)


@pytest.mark.parametrize('name,message', [
    ('vgg_transfer', 'trains input_adapter/bias, input_adapter/kernel'),  # Learned 1x1 adapter.
    ('cnn_simple', 'needs a model with a backbone'),
])
def test_cache_features_is_refused_where_features_would_change(name, message):
  config = load_config(name)
  config.cache_features = True
  with pytest.raises(ConfigError, match=message):
    validate(config)


@pytest.mark.parametrize('stand_ins_kept', [False, True])
def test_a_streamed_image_that_cannot_be_decoded_has_no_features_or_its_stand_ins(
    stand_ins_kept):
  """Evaluated splits leave it out, as evaluating the images does; the training split keeps
  its stand-in's features and label, the examples and steps that training on images has."""
  from cnnjax import sharding
  from cnnjax.data import datasets
  from cnnjax.training import features
  from tests.helpers import experiment, streamed_with_unreadable
  config = shrink(load_config('vgg_transfer_fast'))
  exp = experiment(config)
  mesh = sharding.create_mesh()
  variables = jax.device_put(exp.initial_state().variables, sharding.replicated(mesh))
  shape = tuple(datasets.describe(datasets.DataOptions.from_config(config)).image_shape)
  rng = np.random.default_rng(0)
  n, broken = 11, (4, 10)
  held = datasets.Split(rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                        rng.integers(0, 10, n).astype(np.int32))
  streamed = streamed_with_unreadable(held, broken)
  extract = lambda split: features.extract(exp.model, variables, split, 4, mesh,
                                           lambda count: None, stand_ins_kept)
  of_streamed, of_held = extract(streamed), extract(held)
  # A stand-in is the next readable example: 5 for 4, and 0 for 10, wrapping round.
  kept = (np.array([{4: 5, 10: 0}.get(i, i) for i in range(n)]) if stand_ins_kept
          else np.setdiff1d(np.arange(n), broken))
  np.testing.assert_array_equal(of_streamed.labels, held.labels[kept])
  np.testing.assert_allclose(of_streamed.images, of_held.images[kept], rtol=1e-6, atol=1e-6)
