"""The studies' optimizer: Adam exactly as Keras computes it.

Keras adds epsilon to sqrt(v) before the bias correction: its step is
lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), where optax's Adam
adds eps to sqrt(v_hat), the bias-corrected second moment. In optax's terms
Keras uses eps / sqrt(1 - b2^t): 3.2e-6 instead of 1e-7 at step 1 (b2 = 0.999),
shrinking towards eps as training goes on. `keras_adam` reproduces Keras'
update (moments updated as Keras writes them, m += (g - m)(1 - b1)), with
optax's state layout, so checkpoints look the same either way.
"""
import jax
import jax.numpy as jnp
import optax

UPDATES = ('keras', 'optax')  # config.adam_update


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7
                        ) -> optax.GradientTransformation:
  """Keras' Adam direction, before the learning rate (its sign is that of the gradient)."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: m + (g - m) * (1 - b1), updates, state.mu)
    nu = jax.tree.map(lambda g, v: v + (jnp.square(g) - v) * (1 - b2), updates, state.nu)
    count = optax.safe_int32_increment(state.count)
    t = count.astype(jnp.float32)
    correction = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    direction = jax.tree.map(lambda m, v: correction * m / (jnp.sqrt(v) + eps), mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def adam(learning_rate, epsilon: float, update: str = 'keras') -> optax.GradientTransformation:
  """Adam at `learning_rate` (a float or an optax schedule), as Keras or as optax computes it."""
  if update == 'optax':
    return optax.adam(learning_rate, eps=epsilon)
  if update != 'keras':
    raise ValueError(f'Unknown Adam update {update!r}; expected one of {UPDATES}.')
  return optax.chain(scale_by_keras_adam(eps=epsilon), optax.scale_by_learning_rate(learning_rate))
