"""The faster ops of cnnjax.models.layers equal the ops they replace, values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax.models import layers


def reference_pool(x):
  return nn.max_pool(x, (2, 2), (2, 2), 'VALID')


@pytest.mark.parametrize('shape', [(4, 28, 28, 3), (2, 7, 7, 5), (3, 5, 8, 2), (1, 2, 2, 1)])
def test_max_pool_equals_flax_values_and_gradients_bitwise(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-2, 3, shape), jnp.float32)  # Many ties, as after a ReLU.
  np.testing.assert_array_equal(layers.max_pool_2x2(x), reference_pool(x))
  g = jnp.asarray(rng.normal(size=reference_pool(x).shape), jnp.float32)
  ours = jax.vjp(layers.max_pool_2x2, x)[1](g)[0]
  np.testing.assert_array_equal(ours, jax.vjp(reference_pool, x)[1](g)[0])
  # Ties: only the first maximum of a window (row-major) receives the gradient.
  tie = jnp.zeros((1, 2, 2, 1))
  np.testing.assert_array_equal(jax.grad(lambda x: layers.max_pool_2x2(x).sum())(tie)[0, ..., 0],
                                [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_chunked_kernel_grad_conv_equals_lax(padding):
  rng = np.random.default_rng(1)
  # 10 examples = two chunks of 4 + 2; 11x11 maps are large enough to be chunked.
  x = jnp.asarray(rng.normal(size=(10, 11, 11, 3)), jnp.float32)
  assert x.shape[1] * x.shape[2] >= layers.CPU_KERNEL_GRAD_MIN_POSITIONS
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def ours(x, w):
    return layers.conv_with_chunked_kernel_grad(x, w, (1, 1), padding, dimension_numbers=dn)

  def reference(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
  assert 'custom_vjp' in str(jax.make_jaxpr(ours)(x, w))  # The chunked path, not plain lax.
  y, vjp = jax.vjp(ours, x, w)
  y_ref, vjp_ref = jax.vjp(reference, x, w)
  np.testing.assert_array_equal(y, y_ref)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  (dx, dw), (dx_ref, dw_ref) = vjp(g), vjp_ref(g)
  np.testing.assert_array_equal(dx, dx_ref)
  assert np.abs(dw - dw_ref).max() <= 1e-5 * np.abs(dw_ref).max()  # Only the sum order differs.
  assert not np.array_equal(jax.grad(lambda w: ours(x, w).sum())(w), 0)


def test_layers_conv_uses_the_chunked_kernel_gradient():
  assert layers.Conv(4, (3, 3)).conv_general_dilated is layers.conv_with_chunked_kernel_grad


@pytest.mark.parametrize('strides,padding', [((1, 1), 'SAME'), ((2, 2), 'VALID'),
                                             ((2, 2), ((0, 1), (0, 1)))])
def test_depthwise_conv_equals_grouped_conv(strides, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 10, 9, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 6)), jnp.float32)

  def reference(x, kernel):
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=6)

  def ours(x, kernel):
    return layers.depthwise_conv(x, kernel, strides, padding)
  y, vjp = jax.vjp(ours, x, kernel)
  y_ref, vjp_ref = jax.vjp(reference, x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  for got, expected in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_depthwise_module_initialises_like_a_grouped_flax_conv():
  x = jnp.zeros((1, 8, 8, 5))
  ours = layers.DepthwiseConv((3, 3)).init(jax.random.PRNGKey(0), x)
  grouped = nn.Conv(5, (3, 3), feature_group_count=5, use_bias=False,
                    kernel_init=layers.keras_kernel_init).init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(ours['params']['kernel'], grouped['params']['kernel'])
