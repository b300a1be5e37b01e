"""Transfer learning then fine-tuning, in one run: what trains when, and exact resume."""
import json
import os

import jax
import numpy as np
import pytest

from cnnjax.errors import ConfigError
from cnnjax.models import mobilenet_v2
from cnnjax.runs import checkpoints
from cnnjax.training import params as params_lib
from tests.helpers import (assert_same_run, final_state, load_config, read_jsonl, shrink,
                           train_and_evaluate, validate)

# What fine-tuning trains in the backbone: Keras' layers[100:] (the tutorial's fine_tune_at).
TOP_LAYERS = frozenset(mobilenet_v2.keras_layer_names()[100:])


def two_stage_config(steps, **overrides):
  # Mock data: 24 examples at batch 8 -> 3 steps per epoch; one epoch per stage.
  config = shrink(load_config('cifar_mobilenet_transfer'),
                  **{'num_train_steps': steps, 'num_epochs': 1, **overrides})
  config.fine_tune.num_epochs = 1
  return config


def backbone_arrays(state):
  tree = jax.device_get(params_lib.merge(state.params, state.frozen_params))['backbone']
  return {layer: leaves for layer, leaves in tree.items()}


@pytest.mark.parametrize('batchnorm', ['inference', 'train'])
def test_second_stage_trains_the_top_blocks_only(batchnorm, tmp_path, mock_tfds):
  first, both = str(tmp_path / 'first'), str(tmp_path / 'both')
  train_and_evaluate(two_stage_config(3), first)
  config = two_stage_config(6)
  config.fine_tune.batchnorm = batchnorm
  results = train_and_evaluate(config, both)
  assert [r['stage'] for r in read_jsonl(os.path.join(both, 'metrics.jsonl'))] == [
      'transfer', 'fine_tune']
  after_first, after_both = final_state(config, first), final_state(config, both)
  head = params_lib.count(after_first.params)
  top = sum(params_lib.count(leaves) for layer, leaves in backbone_arrays(after_first).items()
            if layer in TOP_LAYERS)
  assert (results['params_trainable'], results['params_trainable_fine_tune']) == (head, head + top)
  assert set(after_both.params['backbone']) == {
      layer for layer in backbone_arrays(after_both) if layer in TOP_LAYERS}
  before, after = backbone_arrays(after_first), backbone_arrays(after_both)
  for layer in before:
    changed = not np.array_equal(before[layer]['kernel' if 'kernel' in before[layer] else 'scale'],
                                 after[layer]['kernel' if 'kernel' in after[layer] else 'scale'])
    assert changed == (layer in TOP_LAYERS), layer
  stats_before = jax.device_get(after_first.batch_stats)['backbone']
  stats_after = jax.device_get(after_both.batch_stats)['backbone']
  for layer in stats_before:
    moved = not np.array_equal(stats_before[layer]['mean'], stats_after[layer]['mean'])
    assert moved == (batchnorm == 'train' and layer in TOP_LAYERS), layer


@pytest.mark.parametrize('stop_at', [3, pytest.param(4, marks=pytest.mark.slow)])
def test_resume_across_the_stage_boundary_is_bitwise_equal(stop_at, tmp_path, mock_tfds):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train_and_evaluate(two_stage_config(6), straight)
  train_and_evaluate(two_stage_config(stop_at), resumed)
  train_and_evaluate(two_stage_config(6), resumed)
  assert_same_run(straight, resumed, two_stage_config(6))
  # Moving the stage boundary under a saved fine-tuning checkpoint is refused.
  before = json.loads(open(os.path.join(resumed, 'results.json')).read())
  os.remove(os.path.join(resumed, 'results.json'))
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match='num_epochs changed'):
    train_and_evaluate(two_stage_config(9, num_epochs=2), resumed)
  assert before['steps'] == 6


@pytest.mark.parametrize('change,message', [
    ({'unfreeze_from': '', 'unfreeze_blocks': 20}, 'between 1 and 19'),
    ({'unfreeze_from': 'block_11'}, "'block_11' is not a layer of the mobilenet_v2 backbone"),
    ({'unfreeze_blocks': 7}, 'not both'),
    ({'batchnorm': 'frozen'}, 'config.fine_tune.batchnorm'),
    ({'learning_rate': 0.0}, 'config.fine_tune.learning_rate'),
])
def test_bad_fine_tune_settings_are_named(change, message):
  config = load_config('cifar_mobilenet_transfer')
  config.fine_tune.update(change)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_fine_tuning_and_weights_need_a_backbone():
  config = load_config('cnn_simple')
  config.fine_tune.num_epochs = 2
  with pytest.raises(ConfigError, match="'cnn_simple' has none"):
    validate(config)
  config = load_config('cnn_simple')
  config.pretrained = 'imagenet'
  with pytest.raises(ConfigError, match='no pretrained backbone'):
    validate(config)


def test_unknown_nested_field_is_named():
  config = load_config('cifar_mobilenet_transfer')
  config.fine_tune.epochs = 3
  with pytest.raises(ConfigError, match=r"\['fine_tune.epochs'\]"):
    validate(config)
