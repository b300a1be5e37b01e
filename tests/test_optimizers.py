"""The studies' optimizer: cnnjax's Adam takes Keras' steps, not optax's."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.training import optimizers

STEPS = 100


def toy_gradient(w: np.ndarray, step: int) -> np.ndarray:
  """The gradient of a quadratic bowl, tiny (1e-6) so that Adam's epsilon matters, with
  noise that changes sign: where Keras' and optax's epsilons differ, the steps differ."""
  noise = np.random.default_rng(step).normal(size=w.shape).astype(np.float32)
  return (1e-6 * (w - 0.5) + 1e-6 * noise).astype(np.float32)


def run_optax(tx, w0):
  w, state, trajectory = jnp.asarray(w0), tx.init(jnp.asarray(w0)), []
  update = jax.jit(tx.update)
  for step in range(STEPS):
    updates, state = update(jnp.asarray(toy_gradient(np.asarray(w), step)), state, w)
    w = optax.apply_updates(w, updates)
    trajectory.append(np.asarray(w))
  return np.stack(trajectory)


def run_keras(w0):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs the test extra')
  variable = keras.Variable(w0)
  adam = keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7)
  trajectory = []
  for step in range(STEPS):
    gradient = toy_gradient(np.asarray(variable), step)
    adam.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
    trajectory.append(np.asarray(variable))
  return np.stack(trajectory)


def test_adam_takes_keras_steps_for_100_steps():
  w0 = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
  keras_path = run_keras(w0)
  ours = run_optax(optimizers.adam(1e-3, 1e-7, 'keras'), w0)
  optax_path = run_optax(optimizers.adam(1e-3, 1e-7, 'optax'), w0)
  moved = np.abs(keras_path - w0).max(axis=(1, 2))
  np.testing.assert_allclose(ours - w0, keras_path - w0, rtol=1e-4,
                             atol=1e-6 * moved.max())  # Float rounding of the steps only.
  # optax's own Adam puts epsilon after the bias correction: visibly other steps here.
  assert np.abs((optax_path - w0) - (keras_path - w0)).max() > 0.05 * moved.max()


def test_keras_adam_keeps_optax_state_layout():
  params = {'w': jnp.ones((2, 3))}
  ours = optimizers.adam(1e-3, 1e-7, 'keras').init(params)
  theirs = optax.adam(1e-3, eps=1e-7).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)


def test_unknown_update_is_named():
  with pytest.raises(ValueError, match="Unknown Adam update 'sgd'"):
    optimizers.adam(1e-3, 1e-7, 'sgd')
