"""Beyond the studies: augmentation, schedules, optimizers, label smoothing, new models."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnnjax.training import augment
from cnnjax.training import recipes
from cnnjax.training import params as params_lib
from tests.helpers import (assert_same_run, experiment, load_config, shrink, train_and_evaluate,
                           validate)


def batch(n=16, size=8, channels=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, channels))


# --- Augmentation ---------------------------------------------------------------------------

def test_augmentations_keep_shape_and_range():
  images = batch()
  full = augment.Augmentation(crop_padding=2, flip=True, erasing_prob=1.0)
  out = augment.augment(jax.random.PRNGKey(1), images, full)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_a_fixed_key_gives_a_fixed_result_and_other_keys_others():
  images, full = batch(), augment.Augmentation(crop_padding=2, flip=True, erasing_prob=0.5)
  first = augment.augment(jax.random.PRNGKey(1), images, full)
  np.testing.assert_array_equal(first, augment.augment(jax.random.PRNGKey(1), images, full))
  assert not np.array_equal(first, augment.augment(jax.random.PRNGKey(2), images, full))


def test_off_is_the_identity_and_so_is_padding_zero():
  images = batch()
  for off in (augment.Augmentation(), augment.Augmentation(crop_padding=0, erasing_prob=0.0)):
    np.testing.assert_array_equal(augment.augment(jax.random.PRNGKey(0), images, off), images)


def test_a_crop_at_the_padding_offset_is_the_identity_and_others_shift():
  image = batch(1)[0]
  padded = jnp.pad(image, ((2, 2), (2, 2), (0, 0)))
  crops = {tuple(np.asarray(jax.random.randint(jax.random.PRNGKey(k), (2,), 0, 5))): k
           for k in range(200)}
  centre = jax.random.PRNGKey(crops[(2, 2)])
  np.testing.assert_array_equal(augment.random_crop(centre, image, 2), image)
  corner = jax.random.PRNGKey(crops[(0, 0)])
  np.testing.assert_array_equal(augment.random_crop(corner, image, 2), padded[:8, :8])


def test_a_flip_mirrors_or_keeps_and_twice_is_the_identity():
  image = batch(1)[0]
  results = {bool(np.array_equal(augment.random_flip(jax.random.PRNGKey(k), image), image))
             for k in range(20)}
  assert results == {True, False}
  key = next(jax.random.PRNGKey(k) for k in range(20)
             if not np.array_equal(augment.random_flip(jax.random.PRNGKey(k), image), image))
  np.testing.assert_array_equal(augment.random_flip(key, image), image[:, ::-1])


@pytest.mark.parametrize('flip', [False, True])
def test_test_time_views_average_the_logits_of_their_formula(flip):
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 6, 5, 2))
  weights = jax.random.normal(jax.random.PRNGKey(1), (6 * 5 * 2, 4))
  predict = lambda x: x.reshape(x.shape[0], -1) @ weights  # Sees every pixel's place.
  views = lambda x: (predict(x) + predict(x[:, :, ::-1])) / 2 if flip else predict(x)
  padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  up_left, down_right = padded[:, :6, :5], padded[:, 2:, 2:]
  np.testing.assert_array_equal(up_left[:, 1:, 1:], images[:, :-1, :-1])  # Shifted by one.
  expected = views(images) / 2 + (views(up_left) + views(down_right)) / 4
  np.testing.assert_allclose(
      augment.test_logits(predict, images, augment.TestViews(flip, translate=1)), expected,
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(augment.test_logits(predict, images, augment.TestViews(flip)),
                             views(images), rtol=1e-6)
  assert not np.allclose(expected, views(images), atol=1e-3)  # The shifts change the logits.


def test_every_example_gets_its_own_randomness():
  same = jnp.broadcast_to(batch(1), (32, 8, 8, 3))
  out = np.asarray(augment.augment(jax.random.PRNGKey(0), same,
                                   augment.Augmentation(crop_padding=2, flip=True)))
  assert len({out[i].tobytes() for i in range(32)}) > 16


def test_erasing_replaces_one_rectangle():
  image = jnp.zeros((16, 16, 1))
  erased = np.asarray(augment.random_erasing(jax.random.PRNGKey(3), image, 1.0))[..., 0] > 0
  rows, cols = np.nonzero(erased)
  box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  assert box.mean() > 0.95 and 0.02 * 256 * 0.5 <= box.size <= 0.4 * 256 * 1.5


# --- Schedules and optimizers ---------------------------------------------------------------

def test_schedules_follow_their_formulas():
  recipe = lambda **kw: recipes.Recipe(**kw)
  cosine = recipes.learning_rate(recipe(schedule='warmup_cosine', warmup_steps=10), 0.1, 110)
  assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.05)
  assert float(cosine(10)) == pytest.approx(0.1)
  assert float(cosine(60)) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 50 / 100)))
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-9)
  piecewise = recipes.learning_rate(recipe(schedule='piecewise'), 0.1, 100)
  assert [float(piecewise(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  onecycle = recipes.learning_rate(recipe(schedule='onecycle'), 0.1, 100)
  assert float(onecycle(30)) == pytest.approx(0.1) and float(onecycle(0)) < 0.01
  assert recipes.learning_rate(recipe(), 0.1, 100) == 0.1  # The studies: constant.


def test_plateau_cuts_the_rate_after_patience_epochs_without_a_lower_loss():
  recipe = recipes.Recipe(optimizer='sgd', momentum=0.0, schedule='plateau', plateau_patience=2,
                          lr_decay_factor=0.5)
  tx = recipes.create_optimizer(recipe, 1.0, 100, steps_per_epoch=3)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  sizes = []
  for epoch, loss in enumerate([5.0, 4.0, 4.0, 4.0, 4.0, 4.0]):  # Stalls from epoch 2.
    for _ in range(3):
      updates, state = tx.update({'w': jnp.ones(())}, state, params, value=jnp.asarray(loss))
    sizes.append(float(-updates['w']))
  # Improvements at epochs 0-1; epochs 2 and 3 do not improve: cut after epoch 3, again
  # after two more.
  assert sizes == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.25])


def test_the_ema_follows_its_formula_and_is_what_evaluates():
  from cnnjax.training import steps
  recipe = recipes.Recipe(optimizer='sgd', momentum=0.0, ema_decay=0.5)
  tx = recipes.create_optimizer(recipe, 1.0, 10)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  expected = 0.0
  for count in range(12):  # Each step moves w by +1; the EMA starts at w's initial value.
    updates, state = tx.update({'w': -jnp.ones(())}, state, params)
    params = optax.apply_updates(params, updates)
    decay = min(0.5, (1 + count) / (10 + count))  # TensorFlow's num_updates warm-up.
    expected = decay * expected + (1 - decay) * float(params['w'])
  assert decay == 0.5 and (1 + 7) / (10 + 7) < 0.5  # Both branches of the warm-up were used.
  assert float(params['w']) == 12.0
  assert float(recipes.ema_params(state)['w']) == pytest.approx(expected, rel=1e-6)
  train_state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params={},
                                 batch_stats={}, opt_state=state, rng=jax.random.PRNGKey(0))
  assert float(train_state.evaluation_variables['params']['w']) == pytest.approx(expected, rel=1e-6)
  assert float(train_state.variables['params']['w']) == 12.0


def test_weight_decay_skips_biases_and_norms():
  variables = experiment(shrink(load_config('cnn_deep'), model='resnet',
                                model_kwargs={'blocks_per_stage': 1})).variables
  mask = recipes.decay_mask(variables['params'])
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(mask).items()}
  assert flat['stem/kernel'] and flat['logits/kernel']
  assert not flat['logits/bias'] and not flat['stem_bn/scale'] and not flat['stem_bn/bias']
  assert not any(v for k, v in flat.items() if k.endswith(('bias', 'scale')))


def test_adamw_and_sgd_decay_only_the_masked_parameters():
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  for name in ('adamw', 'sgd'):
    tx = recipes.create_optimizer(recipes.Recipe(optimizer=name, weight_decay=0.1), 1.0, 10)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates['bias']).max()) == 0.0, name
    assert float(updates['kernel'][0, 0]) < 0.0, name


def test_clipping_bounds_the_global_norm():
  tx = recipes.create_optimizer(recipes.Recipe(optimizer='sgd', momentum=0.0,
                                               grad_clip_norm=1.0), 1.0, 10)
  params = {'w': jnp.zeros((4,))}
  updates, _ = tx.update({'w': jnp.full((4,), 10.0)}, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(1.0)


@pytest.mark.parametrize('overrides, message', [
    ({'learning_rate': float('inf')}, 'learning_rate must be positive and finite, got inf'),
    ({'learning_rate': float('nan')}, 'learning_rate must be positive and finite, got nan'),
    ({'adam_epsilon': -1.0}, 'adam_epsilon must be positive and finite'),
    ({'weight_decay': float('inf'), 'optimizer': 'adamw'},
     'weight_decay must be 0 \\(off\\) or a positive finite number, got inf'),
    ({'grad_clip_norm': float('nan')}, 'grad_clip_norm must be 0 \\(off\\) or a positive'),
    ({'lr_boundaries': (0.9, 0.5), 'schedule': 'piecewise'}, 'lr_boundaries .* increasing'),
    ({'lr_boundaries': (0.5, 0.5), 'schedule': 'piecewise'}, 'lr_boundaries .* increasing'),
    ({'lr_decay_factor': 0.0, 'schedule': 'piecewise'}, 'lr_decay_factor .* in \\(0, 1\\)'),
    ({'lr_decay_factor': 1.5, 'schedule': 'plateau'}, 'lr_decay_factor .* in \\(0, 1\\)'),
])
def test_recipe_numbers_that_would_train_silently_wrong_are_refused(overrides, message):
  from cnnjax.errors import ConfigError
  config = load_config('cnn_simple')
  config.update(overrides)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_label_smoothing_loss_equals_the_formula():
  from cnnjax.training import steps
  logits = jnp.array([[2.0, 0.5, -1.0]])
  labels = jnp.array([0])
  log_p = jax.nn.log_softmax(logits)[0]
  expected = -(0.9 + 0.1 / 3) * log_p[0] - (0.1 / 3) * (log_p[1] + log_p[2])
  assert float(steps.cross_entropy(logits, labels, 0.1)[0]) == pytest.approx(float(expected))
  assert float(steps.cross_entropy(logits, labels, 0.0)[0]) == pytest.approx(float(-log_p[0]))


# --- Models ---------------------------------------------------------------------------------

RESNET20_CONVS = (3 * 9 * 16                                 # Stem.
                  + 6 * 16 * 9 * 16                          # Stage 1: 3 blocks of 2 convs.
                  + 16 * 9 * 32 + 5 * 32 * 9 * 32 + 16 * 32  # Stage 2, its 1x1 shortcut.
                  + 32 * 9 * 64 + 5 * 64 * 9 * 64 + 32 * 64)  # Stage 3.
RESNET20_BN_CHANNELS = 16 + 6 * 16 + 7 * 32 + 7 * 64          # Stem, 6 convs + shortcut.
CNN_DEEP_CONV_CHANNELS = 32 + 32 + 64 + 64 + 128
CNN_FAST_CONVS = (9 * 24 * 64 + 9 * 64 * 64                   # Block 0 (the stem apart).
                  + 9 * 64 * 256 + 3 * 9 * 256 * 256)          # Blocks 1 and 2.
CNN_FAST_BN_CHANNELS = 24 + 2 * 64 + 4 * 256


@pytest.mark.parametrize('model,kwargs,shape,total,trainable', [
    # BatchNorm: scale and offset train, mean and variance do not (Keras counts all four).
    ('resnet', {}, (32, 32, 3), RESNET20_CONVS + 650 + 4 * RESNET20_BN_CHANNELS,
     RESNET20_CONVS + 650 + 2 * RESNET20_BN_CHANNELS),  # 274,042 / 272,474: ResNet-20's 0.27M.
    # cnn_deep with BatchNorm after every conv, whose biases it replaces.
    ('cnn_deep', {'batch_norm': True}, (28, 28, 1),
     436_586 - CNN_DEEP_CONV_CHANNELS + 4 * CNN_DEEP_CONV_CHANNELS,
     436_586 - CNN_DEEP_CONV_CHANNELS + 2 * CNN_DEEP_CONV_CHANNELS),
    # Global max pooling: the same count at any image size (31 -> 15 -> 7 -> 3, 27 -> 13 -> 6 -> 3).
    *[('cnn_fast', {}, (size, size, c), 2 * 2 * c * 24 + CNN_FAST_CONVS
       + 4 * CNN_FAST_BN_CHANNELS + 2_570, 2 * 2 * c * 24 + CNN_FAST_CONVS
       + 2 * CNN_FAST_BN_CHANNELS + 2_570) for size, c in ((32, 3), (28, 1))],
])
def test_new_models_have_the_parameter_counts_of_their_formulas(model, kwargs, shape, total,
                                                                trainable):
  from cnnjax.models import build_model
  module = build_model(model, 10, kwargs=kwargs)
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape)))
  variables = {k: variables[k] for k in ('params', 'batch_stats')}  # Not the sown statistics.
  assert params_lib.count(variables) == total
  assert params_lib.count(variables['params']) == trainable


def recipe_config(steps, **overrides):
  """cnn_deep with BatchNorm and every recipe piece on (mock data: 3 steps per epoch)."""
  config = shrink(load_config('cnn_deep'), num_train_steps=steps, num_epochs=100,
                  optimizer='adamw', weight_decay=5e-4, schedule='warmup_cosine',
                  warmup_steps=2, grad_clip_norm=1.0, label_smoothing=0.1, ema_decay=0.9)
  config.model_kwargs.batch_norm = True
  config.augment.crop_padding = 2
  config.augment.flip = True
  config.augment.erasing_prob = 0.5
  config.augment.flip_test = True
  config.update(overrides)
  return config


@pytest.mark.parametrize('overrides', [
    {}, {'optimizer': 'sgd', 'schedule': 'plateau', 'plateau_patience': 1}])
def test_a_run_with_every_recipe_piece_resumes_bitwise(overrides, tmp_path, mock_tfds):
  config = lambda steps: recipe_config(steps, **overrides)
  validate(config(5))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train_and_evaluate(config(5), straight)
  train_and_evaluate(config(4), resumed)
  train_and_evaluate(config(5), resumed)
  assert_same_run(straight, resumed, config(5))
