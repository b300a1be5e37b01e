"""The faster ops of cnnjax.models.layers equal the ops they replace, values and gradients."""
import functools

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


@pytest.mark.parametrize('padding,shape', [('SAME', (4, 12, 12, 3)), ('VALID', (3, 13, 11, 2))])
def test_pooling_conv_equals_conv_relu_pool(padding, shape):
  """Bias and ReLU after the pool: same parameters, bitwise outputs and kernel gradients."""

  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):  # The convolution PoolingConv computes (see layers.taps_conv).
      conv = functools.partial(layers.conv_general_dilated, small_image_conv=layers.patches_conv)
      return layers.max_pool_2x2(jax.nn.relu(layers.Conv(5, (3, 3), padding=padding,
                                                         conv_general_dilated=conv,
                                                         name='conv')(x)))

  class Pooling(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.ReLU()(layers.PoolingConv(5, (3, 3), padding=padding, name='conv')(x))

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  init = lambda model: model.init(jax.random.PRNGKey(0), x)['params']
  params = init(Pooling())
  assert_trees_equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  assert_trees_equal(params, init(Reference()))  # Same names, shapes and initial values.
  params = {'conv': {'kernel': params['conv']['kernel'],  # Biases that make dead units too.
                     'bias': jnp.asarray(rng.normal(size=5), jnp.float32)}}
  ours = lambda p: Pooling().apply({'params': p}, x)
  reference = lambda p: Reference().apply({'params': p}, x)
  y = ours(params)
  np.testing.assert_array_equal(y, reference(params))
  assert 0 < float(jnp.mean(y == 0)) < 1
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  grads, grads_ref = jax.vjp(ours, params)[1](g)[0], jax.vjp(reference, params)[1](g)[0]
  np.testing.assert_array_equal(grads['conv']['kernel'], grads_ref['conv']['kernel'])
  np.testing.assert_allclose(grads['conv']['bias'], grads_ref['conv']['bias'], rtol=1e-6)


def test_pooling_conv_gradients_where_rounding_makes_a_tie():
  """y = 1 and 1 + 2^-23 differ, y + 1 rounds to 2 for both: the one case the gradients part.

  Through an identity 1x1 conv, the input is the conv output y. Conv-ReLU-pool sends the
  window's gradient to the first of the tied y + b (row-major), PoolingConv to the largest
  y; the values, and the gradient each window passes on in total, stay equal.
  """
  y = np.zeros((1, 2, 4, 1), np.float32)
  y[0, :, :2, 0] = [[1.0, np.nextafter(np.float32(1), np.float32(2))], [0.5, 0.25]]  # Ties.
  y[0, :, 2:, 0] = [[0.75, 3.0], [0.5, 1.5]]  # No tie.
  params = {'conv': {'kernel': jnp.ones((1, 1, 1, 1)), 'bias': jnp.ones((1,))}}

  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.max_pool_2x2(jax.nn.relu(layers.Conv(1, (1, 1), name='conv')(x)))

  class Pooling(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.ReLU()(layers.PoolingConv(1, (1, 1), name='conv')(x))

  x = jnp.asarray(y)
  np.testing.assert_array_equal(Pooling().apply({'params': params}, x),
                                Reference().apply({'params': params}, x))
  assert float(x[0, 0, 0, 0] + 1.0) == float(x[0, 0, 1, 0] + 1.0)  # The tie is real.
  grad = lambda model: jax.grad(lambda x: model.apply({'params': params}, x).sum())(x)[0, ..., 0]
  ours, reference = np.asarray(grad(Pooling())), np.asarray(grad(Reference()))
  np.testing.assert_array_equal(reference[:, :2], [[1, 0], [0, 0]])  # First of the tied.
  np.testing.assert_array_equal(ours[:, :2], [[0, 1], [0, 0]])        # The largest y.
  np.testing.assert_array_equal(ours[:, 2:], reference[:, 2:])       # Without ties: equal.
  np.testing.assert_array_equal(ours.sum(), reference.sum())


def test_cpu_steps_compile_convolutions_without_ynnpack():
  """The option `compilation` sets is accepted by this XLA and changes what it compiles."""
  from cnnjax import compilation
  assert compilation.compiler_options('cpu') == compilation.CPU_OPTIONS
  assert compilation.compiler_options('gpu') is None
  x, w = jnp.ones((8, 14, 14, 32)), jnp.ones((3, 3, 32, 64))  # cnn_simple's second conv.
  conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  compiled = lambda jit: jit(conv).lower(x, w).compile().as_text()
  if '__ynn_fusion' not in compiled(jax.jit):
    pytest.skip("this XLA's CPU convolutions do not use YNNPACK")
  assert '__ynn_fusion' not in compiled(compilation.jit)
  np.testing.assert_array_equal(compilation.jit(conv)(x, w), jax.jit(conv)(x, w))


def _xla_conv(x, kernel, padding, strides=(1, 1)):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=layers.NHWC)


def _conv_outputs_and_gradients(conv, x, kernel, g):
  y, pullback = jax.vjp(conv, x, kernel)
  return (y, *pullback(g))


@pytest.mark.parametrize('small_image_conv', ['taps_conv', 'patches_conv'])
@pytest.mark.parametrize('channels,kernel_size,padding', [
    (1, (3, 3), 'SAME'), (3, (3, 3), 'VALID'), (2, (2, 3), ((1, 0), (2, 1))), (3, (5, 5), 'SAME')])
def test_small_image_convs_equal_xla_conv_values_and_gradients(small_image_conv, channels,
                                                               kernel_size, padding):
  """A first layer's convolution as a sum over taps or as patches: XLA's values, input and
  kernel gradients (up to summation order), for any kernel size and padding."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 11, 9, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=kernel_size + (channels, 6)), jnp.float32)
  conv = lambda x, k: layers.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=layers.NHWC,
      small_image_conv=getattr(layers, small_image_conv))
  reference = lambda x, k: _xla_conv(x, k, padding)
  g = jnp.asarray(rng.normal(size=reference(x, kernel).shape), jnp.float32)
  ours = _conv_outputs_and_gradients(conv, x, kernel, g)
  for a, b in zip(ours, _conv_outputs_and_gradients(reference, x, kernel, g)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
  # The path taken: no convolution (forward or gradients); a product of patches for the kernel
  # gradient; in the forward pass, a product only for the patches.
  jaxpr = str(jax.make_jaxpr(lambda x, k: jax.grad(lambda k: conv(x, k).sum())(k))(x, kernel))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr
  forward = str(jax.make_jaxpr(conv)(x, kernel))
  assert 'conv_general_dilated' not in forward
  assert ('dot_general' in forward) == (small_image_conv == 'patches_conv')


def test_taps_conv_sums_in_float32_for_bfloat16_inputs():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 3, 4)), jnp.bfloat16)
  y = layers.taps_conv(x, kernel, 'SAME')
  assert y.dtype == jnp.bfloat16
  exact = _xla_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), 'SAME')
  np.testing.assert_array_equal(y, exact.astype(jnp.bfloat16))  # One rounding, at the end.


@pytest.mark.parametrize('channels,features,size,strides', [
    (4, 5, 8, (1, 1)), (3, 5, 8, (2, 2)), (3, 64, 8, (1, 1)), (1, 5, 33, (1, 1))])
def test_other_convolutions_stay_xla_convolutions(channels, features, size, strides):
  """More channels than an image's, a stride, more features or pixels than the patches
  bounds: XLA's convolution, bitwise."""
  x, kernel = jnp.ones((2, size, size, channels)), jnp.ones((3, 3, channels, features))
  conv = lambda x, k: layers.conv_general_dilated(x, k, strides, 'SAME',
                                                  dimension_numbers=layers.NHWC)
  assert 'conv_general_dilated' in str(jax.make_jaxpr(conv)(x, kernel))
  np.testing.assert_array_equal(conv(x, kernel), _xla_conv(x, kernel, 'SAME', strides))


def test_flax_conv_layer_uses_the_small_image_convolution():
  """`layers.Conv` (and so every model's first conv) goes through `conv_general_dilated`,
  with the same parameters and values as a plain Flax conv: as a sum over taps, and in a
  `PoolingConv` as a product of patches."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 1)), jnp.float32)
  ours, plain = layers.Conv(4, (3, 3)), nn.Conv(4, (3, 3), kernel_init=layers.keras_kernel_init)
  variables = ours.init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, variables, plain.init(jax.random.PRNGKey(0), x))
  jaxpr = str(jax.make_jaxpr(ours.apply)(variables, x))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' not in jaxpr
  np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x), atol=1e-5)
  pooling = layers.PoolingConv(4, (3, 3))
  jaxpr = str(jax.make_jaxpr(pooling.apply)(pooling.init(jax.random.PRNGKey(0), x), x))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr


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
