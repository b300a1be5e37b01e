"""Every study model has the study's parameter counts and Keras' train/eval behaviour."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.data import datasets
from cnnjax.models import build_model
from cnnjax.models import mobilenet_v2
from cnnjax.training import params as params_lib
from cnnjax.training import setup
from tests.helpers import ALL_CONFIGS, STUDY_CONFIGS, experiment, load_config

# The studies' tables: (total, trainable), totals counting BatchNorm statistics as Keras does.
STUDY_PARAMS = {
    'mlp_256_128': (235_146, 235_146),
    'mlp_128_64': (109_386, 109_386),
    'mlp_512_256_128': (567_434, 567_434),
    'cnn_simple': (50_186, 50_186),
    'cnn_deep': (436_586, 436_586),
    'vgg_scratch': (15_897_168, 15_897_168),
    'vgg_transfer': (15_897_168, 1_182_480),
    'cifar_cnn': (315_722, 315_722),
    'cifar_mobilenet_transfer': (5_209_930, 2_951_946),
}
# Configs beyond the studies: what they change is visible in their counts.
VARIANT_PARAMS = {
    'vgg_transfer_preprocessed': (15_897_162, 1_182_474),  # No learned 1x1 adapter (6 params).
    'cifar_mobilenet_transfer_preprocessed': (5_209_930, 2_951_946),
    'vgg_transfer_fast': (15_897_162, 1_182_474),  # vgg_transfer_preprocessed, cached.
    'cifar_mobilenet_transfer_fast': (5_209_930, 2_951_946),
    'vgg_scratch_he': (15_897_168, 15_897_168),
    'vgg_scratch_lr1e4': (15_897_168, 15_897_168),
    # 13 BatchNorms over 4,224 channels: scale and offset train, mean and variance do not.
    'vgg_scratch_bn': (15_897_168 + 4 * 4_224, 15_897_168 + 2 * 4_224),
    # cifar_cnn at 64x64 RGB on the 3 classes of helpers.tiny_image_tree:
    # 896 + 18,496 + (14 * 14 * 64 + 1) * 128 + (128 + 1) * 3.
    'image_folder': (1_625_539, 1_625_539),
    # Beyond the studies: BatchNorm CNNs (bias-free convs; BatchNorm's 4 per channel, 2 train).
    # 3x3 convs 1-32-32-64-64-128-128, 448 channels, Dense 1,152 -> 256 -> 10.
    'fashion_mnist_best': (285_984 + 4 * 448 + 295_168 + 2_570,
                           285_984 + 2 * 448 + 295_168 + 2_570),
    # cnn_fast: a 2x2 whitening conv 3 -> 24 (288 frozen weights, 24 biases), 3x3 convs
    # 24-64-64-256-256-256-256 (1,967,616), BatchNorms without scale over 1,152 channels
    # (offset, mean and variance; the offset trains), Dense 256 -> 10.
    'cifar10_best': (288 + 24 + 1_967_616 + 3 * 1_152 + 2_570, 24 + 1_967_616 + 1_152 + 2_570),
}
CONFIG_PARAMS = {**STUDY_PARAMS, **VARIANT_PARAMS}


def abstract_state(config):
  """The step-0 state's shapes: the whole setup traced, no weights initialised."""
  return jax.eval_shape(lambda: experiment(config).initial_state())


def test_every_config_has_a_param_count():
  assert set(STUDY_PARAMS) == set(STUDY_CONFIGS)
  assert set(CONFIG_PARAMS) == set(ALL_CONFIGS)


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_parameter_counts_match_study(name):
  state = abstract_state(load_config(name))
  total, trainable = CONFIG_PARAMS[name]
  assert params_lib.count(state.variables) == total
  assert params_lib.count(state.params) == trainable


def test_frozen_params_get_no_optimizer_state():
  state = abstract_state(load_config('vgg_transfer'))
  assert params_lib.count(state.opt_state) == 2 * 1_182_480 + 1  # Two moments and a count.
  assert set(state.frozen_params) == {'backbone'}


def test_mobilenet_v2_keras_layer_names_and_output_shape():
  model = mobilenet_v2.MobileNetV2()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3))))
  names = set(variables['params'])
  for expected in ('Conv1', 'bn_Conv1', 'expanded_conv_depthwise', 'expanded_conv_project_BN',
                   'block_16_expand', 'block_16_project', 'Conv_1', 'Conv_1_bn'):
    assert expected in names
  assert len([n for n in names if n.endswith('depthwise')]) == 17
  assert variables['params']['block_1_depthwise']['kernel'].shape == (3, 3, 1, 96)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 96, 96, 3))), variables)
  assert out.shape == (2, 3, 3, 1280)


@pytest.mark.parametrize('size,expected', [(96, ((0, 1), (0, 1))), (7, ((1, 1), (1, 1)))])
def test_correct_pad_matches_keras(size, expected):
  assert mobilenet_v2.correct_pad(size, size) == expected


def test_dropout_only_in_training():
  model = build_model('cnn_deep', 10)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  train_b = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(3)})
  assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize('trainable,updates', [('.*', True), ('^head', False)])
def test_batchnorm_statistics_update_only_when_training_and_not_frozen(trainable, updates):
  model = build_model('mobilenet_v2_classifier', 10, trainable, {'image_size': 32})
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  _, new = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)},
                       mutable=['batch_stats'])
  before = variables['batch_stats']['backbone']['bn_Conv1']['mean']
  after = new['batch_stats']['backbone']['bn_Conv1']['mean']
  assert (not np.array_equal(before, after)) == updates
  _, unchanged = model.apply(variables, x, train=False, mutable=['batch_stats'])
  np.testing.assert_array_equal(unchanged['batch_stats']['backbone']['bn_Conv1']['mean'], before)


def test_unknown_model_and_option_are_named():
  with pytest.raises(ValueError, match="Unknown model 'resnet50'.*cnn_simple"):
    build_model('resnet50', 10)
  with pytest.raises(ValueError, match=r"no option\(s\) \['hidden'\].*hidden_sizes"):
    build_model('mlp', 10, kwargs={'hidden': 3})


@pytest.mark.parametrize('name, image_shape, smallest', [
    ('cnn_simple', (3, 3, 1), 4),   # Two 2x2 pools.
    ('cnn_deep', (2, 2, 1), 8),     # Three pools.
    ('cifar_cnn', (8, 8, 3), 10),   # Valid 3x3 convs between its two pools.
])
def test_smallest_image_side_a_model_fits(name, image_shape, smallest):
  model = build_model(name, 10)
  assert setup.smallest_image_side(model, image_shape) == smallest
  images = lambda side: jnp.zeros((1, side, side, image_shape[-1]))
  model.init(jax.random.PRNGKey(0), images(smallest))  # Fits ...
  with pytest.raises(Exception):
    model.init(jax.random.PRNGKey(0), images(smallest - 1))  # ... and one pixel less does not.


@pytest.mark.parametrize('name, kwargs, message', [
    ('vgg16_classifier', {'hidden': 0}, 'hidden must be a positive integer, got 0'),
    ('vgg16_classifier', {'image_size': -5}, 'image_size must be a positive integer, got -5'),
    ('vgg16_classifier', {'dropout': 1.0}, 'dropout must be a rate in [0, 1), got 1.0'),
    ('vgg16_classifier', {'width': float('inf')}, 'width must be a positive finite number'),
    ('vgg16_classifier', {'batch_norm': 1}, 'batch_norm must be True or False, got 1'),
    ('vgg16_classifier', {'preprocessing': 'cafe'}, "Unknown preprocessing 'cafe'"),
    ('mlp', {'hidden_sizes': (256, 0)}, 'hidden_sizes must be a tuple of positive integers'),
    ('cnn_deep', {'block_features': ((32, 32), (64, -64))}, 'block_features must be a tuple'),
    ('cnn_deep', {'head_dropout': -0.1}, 'head_dropout must be a rate in [0, 1)'),
    ('resnet', {'blocks_per_stage': 0}, 'blocks_per_stage must be a positive integer'),
])
def test_model_options_out_of_range_are_named(name, kwargs, message):
  """Each failed deep in Flax (a size of 0: a division by zero) or trained without a word."""
  with pytest.raises(ValueError) as error:
    build_model(name, 10, kwargs=kwargs)
  assert message in str(error.value)


def test_model_options_in_range_pass():
  build_model('mlp', 10, kwargs={'hidden_sizes': ()})  # Logistic regression.
  build_model('cnn_deep', 10, kwargs={'block_dropout': 0, 'block_features': [[16], [32]]})
  build_model('resnet', 10, kwargs={'width': 2})


def test_a_failure_that_no_image_size_cures_is_not_called_a_size_problem():
  class Broken(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      raise RuntimeError('a bug')
  assert setup.smallest_image_side(Broken(), (8, 8, 1), largest=64) is None


@pytest.mark.parametrize('name', ['mlp_256_128', 'cnn_simple', 'cnn_deep', 'cifar_cnn'])
def test_study_model_equals_its_keras_original(name):
  """The same weights in the study's Keras model give the same predictions."""
  pytest.importorskip('keras', reason='the Keras comparison needs the test extra')
  from experiments import keras_reference
  config = load_config(name)
  spec = datasets.describe(datasets.DataOptions.from_config(config))
  model = experiment(config).model
  variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1,) + spec.image_shape))
  keras_model = keras_reference.build(config)
  assert keras_model.count_params() == STUDY_PARAMS[name][0]
  keras_reference.copy_params(variables['params'], keras_model)
  x = np.random.default_rng(0).uniform(0, 1, (16,) + spec.image_shape).astype(np.float32)
  expected = np.asarray(keras_model(x, training=False))
  got = np.asarray(jax.nn.softmax(model.apply(variables, x)))
  np.testing.assert_allclose(got, expected, atol=1e-5)
