"""`layers.Dropout`: hashed masks in place of Flax's threefry ones.

It replaces `nn.Dropout` in every model, so it must do what that does
(inverted dropout at the configured rate, values and gradients), draw masks
that look independent (per example, per unit, per key), and give the same
masks however the batch is split over devices.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models import layers
from tests.helpers import REPO_ROOT


def apply_dropout(x, rate, key):
  return layers.Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': key})


def expected_mask(x, rate, key):
  """The mask by its definition: the layer's key, hashed bits below (1 - rate) * 2**32."""
  bound = layers.Dropout(rate).bind({}, rngs={'dropout': key})
  bits = layers.hash_bits(bound.make_rng('dropout'), x.shape)
  return np.asarray(bits) < np.uint64(round((1 - rate) * 2 ** 32))


@pytest.mark.parametrize('rate', [0.1, 0.25, 0.5, 0.7])
def test_keep_rate_is_the_configured_one(rate):
  x = jnp.ones((256, 1000))
  dropped = float(np.mean(np.asarray(apply_dropout(x, rate, jax.random.PRNGKey(0))) == 0))
  sigma = np.sqrt(rate * (1 - rate) / x.size)
  assert abs(dropped - rate) < 5 * sigma, (dropped, rate)


def test_values_and_gradients_are_inverted_dropout_with_its_mask():
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 7, 7, 8))
  key, rate = jax.random.PRNGKey(2), 0.3
  mask = expected_mask(x, rate, key)
  reference = lambda x: jnp.where(mask, x / (1 - rate), 0.0)
  y, vjp = jax.vjp(lambda x: apply_dropout(x, rate, key), x)
  y_ref, vjp_ref = jax.vjp(reference, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)  # One ulp: XLA may divide by multiplying.
  cotangent = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  np.testing.assert_allclose(vjp(cotangent)[0], vjp_ref(cotangent)[0], rtol=1e-6)  # One ulp: XLA may divide by multiplying.
  assert 0 < mask.mean() < 1


def test_deterministic_and_edge_rates():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(apply_dropout(x, 0.0, jax.random.PRNGKey(0)), x)
  np.testing.assert_array_equal(apply_dropout(x, 1.0, jax.random.PRNGKey(0)), 0 * x)


def test_masks_differ_between_keys_examples_and_units():
  x = jnp.ones((64, 512))
  a = np.asarray(apply_dropout(x, 0.5, jax.random.PRNGKey(0))) > 0
  b = np.asarray(apply_dropout(x, 0.5, jax.random.PRNGKey(1))) > 0
  np.testing.assert_array_equal(a, np.asarray(apply_dropout(x, 0.5, jax.random.PRNGKey(0))) > 0)
  assert 0.45 < np.mean(a != b) < 0.55                  # Another key: an independent mask.
  assert len({row.tobytes() for row in a}) == len(a)    # Every example its own mask.
  assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.02  # Neighbours.
  assert abs(np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]) < 0.02


def test_hash_bits_are_uniform_in_every_bit():
  bits = np.asarray(layers.hash_bits(jax.random.PRNGKey(5), (1 << 16,)))
  per_bit = [np.mean((bits >> i) & 1) for i in range(32)]
  assert max(abs(p - 0.5) for p in per_bit) < 5 * 0.5 / np.sqrt(bits.size)
  assert len(np.unique(bits)) > 0.99 * bits.size


SHARDED_MASKS = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from cnnjax.models import build_model
model = build_model('cnn_deep', 10)
x = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1))
variables = model.init(jax.random.PRNGKey(0), x[:1])
step = lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(7)})
outputs = []
for n in (1, 2, 8):
  mesh = Mesh(np.array(jax.devices()[:n]), ('data',))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec('data')))
  out = jax.jit(step, out_shardings=NamedSharding(mesh, PartitionSpec('data')))(variables, sharded)
  assert len(out.sharding.device_set) == n
  outputs.append(np.asarray(out))
for out in outputs[1:]:
  np.testing.assert_allclose(out, outputs[0], rtol=1e-5, atol=1e-6)
print('ok')
"""


def test_masks_are_the_same_on_1_2_and_8_devices():
  """cnn_deep in training mode (two dropout layers) on a batch split 1, 2 and 8 ways.

  Equal up to float rounding of the convolutions: a mask differing in one unit of 16 x 256
  moves the logits by ~1e-2."""
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, '-c', SHARDED_MASKS], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]
