"""Patch whitening (cnn_fast's stem='whitening'): its filters whiten, and a run keeps them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.data import pipeline
from cnnjax.models import build_model
from cnnjax.models import whitening
from tests.helpers import (assert_same_run, experiment, final_state, load_config, load_dataset,
                           shrink, tiny_image_tree, train_and_evaluate)


def correlated_images(n=64, size=8, channels=3, seed=0):
  """Images whose channels and neighbouring pixels are correlated, as photographs' are."""
  rng = np.random.default_rng(seed)
  shared = rng.random((n, size // 2, size // 2, 1)).repeat(2, axis=1).repeat(2, axis=2)
  return 0.7 * shared + 0.3 * rng.random((n, size, size, channels))


def test_patches_are_in_the_order_a_flax_conv_reads_its_kernel():
  images = correlated_images()
  kernel = np.random.default_rng(1).normal(size=(2, 2, 3, 5))
  conv = jax.lax.conv_general_dilated(images, kernel, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(np.asarray(conv).reshape(-1, 5),
                             whitening.image_patches(images, 2) @ kernel.reshape(-1, 5),
                             rtol=1e-5, atol=1e-5)


def test_the_filters_decorrelate_patches_and_come_with_their_negatives():
  images, eps = correlated_images(), 1e-3
  kernel = whitening.whitening_kernel(images, 2, eps)
  assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == np.float32
  filters = kernel.reshape(12, 24).astype(np.float64)
  np.testing.assert_array_equal(filters[:, 12:], -filters[:, :12])
  patches = whitening.image_patches(images, 2)
  eigenvalues = np.linalg.eigvalsh(np.cov(patches, rowvar=False))
  # Uncorrelated outputs, of variance eigenvalue / (eigenvalue + eps): whitened above eps.
  np.testing.assert_allclose(np.cov(patches @ filters[:, :12], rowvar=False),
                             np.diag(eigenvalues / (eigenvalues + eps)), atol=1e-5)
  assert eigenvalues[-1] / (eigenvalues[-1] + eps) > 0.99


@pytest.mark.parametrize('channels', [3, 1])
def test_a_whitening_stem_has_twice_its_patch_size_in_filters_a_bias_and_no_batchnorm(channels):
  from cnnjax.training import params as params_lib
  conv, whitened = (build_model('cnn_fast', 10, kwargs={'stem': stem}) for stem in
                    ('conv', 'whitening'))
  shape = (1, 32, 32, channels)
  init = lambda m: jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  conv_vars, white_vars = init(conv), init(whitened)
  assert white_vars['params']['stem']['kernel'].shape == (2, 2, channels, 8 * channels)
  assert 'stem_bn' not in white_vars['params']
  stem = lambda features: 4 * channels * features   # Kernel (no bias) and the BatchNorm's 4.
  assert (params_lib.count(white_vars['params'])
          == params_lib.count(conv_vars['params']) - stem(24) - 2 * 24
          + 4 * channels * 8 * channels + 8 * channels
          + 9 * 64 * (8 * channels - 24))                   # block0_conv0 sees the new width.


@pytest.mark.parametrize('field,value,choices', [('stem', 'whiten', 'conv, whitening'),
                                                  ('activation', 'relu6', 'relu, gelu')])
def test_an_unknown_stem_or_activation_fails_when_the_model_is_built(field, value, choices):
  with pytest.raises(ValueError, match=f"Unknown {field} '{value}'.*{choices}"):
    build_model('cnn_fast', 10, kwargs={field: value})


def whitening_config(steps):
  config = shrink(load_config('cifar10_best'), num_train_steps=steps, num_epochs=100)
  config.model_kwargs.block_features = (8, 8, 8)
  return config


def test_a_run_starts_from_the_datas_filters_keeps_them_and_resumes_bitwise(tmp_path,
                                                                            mock_tfds):
  config = whitening_config(4)
  assert config.model_kwargs.stem == 'whitening'
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train_and_evaluate(config, straight)
  train_and_evaluate(whitening_config(2), resumed)
  train_and_evaluate(config, resumed)
  assert_same_run(straight, resumed, config)

  train = load_dataset('cifar10').train   # Mock data: all its examples are the sample.
  images, _ = train.read(np.arange(len(train)))
  expected = whitening.whitening_kernel(np.asarray(pipeline.to_inputs(images)), 2)
  state = jax.device_get(final_state(config, straight))
  assert 'kernel' not in state.params['stem']           # Frozen: config.trainable leaves it out,
  np.testing.assert_array_equal(state.frozen_params['stem']['kernel'], expected)
  assert np.any(state.params['stem']['bias'] != 0)      # while its bias trains.


def test_the_filters_are_the_same_from_a_held_or_a_streamed_split():
  tree = tiny_image_tree()
  held, streamed = (load_dataset('image_folder', local_data_dir=tree, image_size=32, channels=3,
                                 data_in_memory=mode).train for mode in ('true', 'false'))
  assert streamed.streamed and not held.streamed
  config = shrink(load_config('cifar10_best'), dataset='image_folder', local_data_dir=tree,
                  image_size=32, channels=3)
  setup = experiment(config)
  kernels = [setup.init_from_data(setup.variables, split)['params']['stem']['kernel']
             for split in (held, streamed)]
  np.testing.assert_array_equal(kernels[0], kernels[1])
  images, _ = held.read(np.arange(len(held)))
  expected = whitening.whitening_kernel(np.asarray(pipeline.to_inputs(images)), 2)
  np.testing.assert_array_equal(kernels[0], expected)
