"""cnnjax's op rewrites and compiler options against what they replace, in one run.

Max pooling, convolutions compiled with `cnnjax.compilation`'s options
against XLA's defaults (whole, then pass by pass with the rate each pass
reaches), first-layer convolutions as products of patches,
pooling before the bias and ReLU, depthwise convolutions and hashed dropout
masks, each against the op it replaces on CPU.

Each pair is checked for equal results first, then timed (jitted, median
of repeated calls) on the shapes of the studies' CNNs at batch 64. Both
sides of a row compile with cnnjax's options unless the row compares them.
"""
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax import compilation
from cnnjax.models import layers

POOL_SHAPES = ((64, 28, 28, 32), (64, 14, 14, 64), (64, 7, 7, 128))
DEPTHWISE_SHAPES = ((64, 48, 48, 32, 1), (64, 48, 48, 96, 2), (64, 24, 24, 144, 1),
                    (64, 6, 6, 576, 1))  # MobileNetV2 at 96x96: (N, H, W, C, stride).
CONV_SHAPES = ((64, 28, 28, 1, 32), (64, 28, 28, 32, 32), (64, 14, 14, 32, 64),
               (64, 14, 14, 64, 64), (64, 7, 7, 64, 128))
# First layers (N, H, W, C, O, padding): cnn_simple's and cnn_deep's, cifar_cnn's; then two
# that `layers.conv_general_dilated` leaves to XLA (64 features; a 96x96 image).
IMAGE_CONV_SHAPES = ((64, 28, 28, 1, 32, 'SAME'), (64, 32, 32, 3, 32, 'VALID'),
                     (64, 32, 32, 3, 64, 'SAME'), (16, 96, 96, 3, 32, 'SAME'))
# The inputs of cnn_deep's dropout layers at batch 64 (three blocks, the head), at once.
DROPOUT_SHAPES = ((64, 14, 14, 32), (64, 7, 7, 64), (64, 3, 3, 128), (64, 256))
FIRST_BLOCK_SHAPE = (64, 28, 28, 32)  # cnn_deep's first block: (N, H, W, features).


def median_ms(fn, *args, repeats: int = 30, jit=compilation.jit) -> float:
  fn = jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def _reference_pool(x):
  return nn.max_pool(x, (2, 2), (2, 2), 'VALID')


def _reference_conv(x, w, padding='SAME'):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=layers.NHWC)


def _conv_relu_pool(params, x):  # With the convolution PoolingConv runs (`layers`).
  y = layers.conv_general_dilated(x, params['kernel'], (1, 1), 'SAME',
                                  dimension_numbers=layers.NHWC,
                                  small_image_conv=layers.patches_conv)
  return layers.max_pool_2x2(jax.nn.relu(y + params['bias']))


def _pooling_conv(params, x):
  conv = layers.PoolingConv(params['bias'].shape[0], (3, 3))
  return jax.nn.relu(conv.apply({'params': params}, x))


def _assert_equal_up_to_summation_order(ours, reference, tolerance: float = 1e-5) -> None:
  """Equal up to the rounding of sums reordered: within `tolerance` of the largest magnitude."""
  def check(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= tolerance * np.abs(b).max(), np.abs(a - b).max()
  jax.tree.map(check, ours, reference)


def _gradients(fn):
  """Gradients with respect to both arguments: what a train step needs of a layer."""
  return jax.grad(lambda a, b, g: jnp.vdot(fn(a, b), g), argnums=(0, 1))


# A 3x3 convolution's three passes, each alone (XLA drops what a pass does not need).
CONV_PASSES = {
    'forward': lambda x, kernel, g: _reference_conv(x, kernel),
    'input gradient': lambda x, kernel, g: jax.vjp(
        lambda x: _reference_conv(x, kernel), x)[1](g)[0],
    'kernel gradient': lambda x, kernel, g: jax.vjp(
        lambda kernel: _reference_conv(x, kernel), kernel)[1](g)[0],
}


def _conv_pass_rows(x, kernel, g) -> list[dict]:
  """Each pass of a convolution under XLA's defaults and cnnjax's options, with the rate
  the latter reaches: a pass far below the others' rate is where a step loses its time."""
  n, h, w, cin = x.shape
  flop = 2 * n * h * w * cin * kernel.shape[-1] * kernel.shape[0] * kernel.shape[1]
  rows = []
  for name, conv_pass in CONV_PASSES.items():
    cnnjax_ms = median_ms(conv_pass, x, kernel, g)
    rows.append({'op': f'conv3x3 {name}, XLA default vs cnnjax options',
                 'shape': (n, h, w, cin, kernel.shape[-1]),
                 'reference_ms': median_ms(conv_pass, x, kernel, g, jit=jax.jit),
                 'cnnjax_ms': cnnjax_ms, 'cnnjax_gflop_per_s': flop / cnnjax_ms / 1e6})
  return rows


def _image_conv_rows(rng) -> list[dict]:
  """A first layer's convolution, XLA's against patches (`layers.patches_conv`): forward
  (evaluation) and forward with the kernel gradient (training: a first layer needs no input
  gradient)."""
  rows = []
  for n, h, w, cin, cout, padding in IMAGE_CONV_SHAPES:
    x = jnp.asarray(rng.uniform(size=(n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    xla = functools.partial(_reference_conv, padding=padding)
    ours = functools.partial(layers.patches_conv, padding=padding)
    g = jnp.asarray(rng.normal(size=xla(x, kernel).shape), jnp.float32)
    kernel_grad = lambda conv: jax.grad(lambda k, x, g: jnp.vdot(jax.nn.relu(conv(x, k)), g))
    _assert_equal_up_to_summation_order(compilation.jit(ours)(x, kernel), xla(x, kernel))
    _assert_equal_up_to_summation_order(compilation.jit(kernel_grad(ours))(kernel, x, g),
                                        compilation.jit(kernel_grad(xla))(kernel, x, g))
    shape = (n, h, w, cin, cout)
    rows.append({'op': f'image conv3x3 {padding} forward, XLA conv vs patches', 'shape': shape,
                 'reference_ms': median_ms(xla, x, kernel), 'cnnjax_ms': median_ms(ours, x, kernel)})
    rows.append({'op': f'image conv3x3 {padding} forward+kernel gradient, XLA conv vs patches',
                 'shape': shape, 'reference_ms': median_ms(kernel_grad(xla), kernel, x, g),
                 'cnnjax_ms': median_ms(kernel_grad(ours), kernel, x, g)})
  return rows


def _first_block_row(rng) -> dict:
  """`cnn_deep`'s first two layers as they train (conv, bias, ReLU, then a 32-feature conv;
  both kernel gradients), with the first convolution as a product of patches
  (`layers.patches_conv`) against a sum over taps (`layers.taps_conv`, what `layers.Conv`
  runs): the taps are the form XLA fuses into the ReLU and the second conv's gradients."""
  n, h, w, features = FIRST_BLOCK_SHAPE
  x = jnp.asarray(rng.uniform(size=(n, h, w, 1)), jnp.float32)
  params = {'k0': jnp.asarray(rng.normal(size=(3, 3, 1, features)) / 3, jnp.float32),
            'b0': jnp.asarray(rng.normal(size=features) / 10, jnp.float32),
            'k1': jnp.asarray(rng.normal(size=(3, 3, features, features)) / 17, jnp.float32)}
  g = jnp.asarray(rng.normal(size=(n, h, w, features)), jnp.float32)

  def kernel_gradients(first_conv):
    def loss(params, x, g):
      y = jax.nn.relu(first_conv(x, params['k0'], 'SAME') + params['b0'])
      return jnp.vdot(_reference_conv(y, params['k1']), g)
    return jax.grad(loss)
  patches, taps = kernel_gradients(layers.patches_conv), kernel_gradients(layers.taps_conv)
  _assert_equal_up_to_summation_order(compilation.jit(taps)(params, x, g),
                                      compilation.jit(patches)(params, x, g))
  return {'op': 'first block conv-ReLU-conv forward+kernel gradients, patches vs taps',
          'shape': (n, h, w, 1, features), 'reference_ms': median_ms(patches, params, x, g),
          'cnnjax_ms': median_ms(taps, params, x, g)}


def _dropout_row(rng) -> dict:
  """Flax's threefry masks against `layers.Dropout`'s hashed ones, forward and gradient.

  The masks differ by design, so what is checked first is what both must do: the same
  function of their own mask (the gradient is the mask over the keep rate) at the same
  keep rate."""
  xs = [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in DROPOUT_SHAPES]
  key = jax.random.PRNGKey(0)

  def gradients(layer):
    def loss(xs):
      return sum(jnp.sum(layer(0.25).apply({}, x, deterministic=False, rngs={'dropout': key})
                         ** 2) for x in xs)
    return jax.grad(loss)
  for layer in (nn.Dropout, layers.Dropout):
    for x, grad in zip(xs, compilation.jit(gradients(layer))(xs)):
      kept = np.asarray(grad) != 0
      np.testing.assert_allclose(np.asarray(grad)[kept], 2 * np.asarray(x)[kept] / 0.75 ** 2,
                                 rtol=1e-5)
      assert abs(kept.mean() - 0.75) < 0.02, kept.mean()
  return {'op': 'dropout 0.25 forward+gradient, threefry vs hashed masks (cnn_deep, 4 layers)',
          'shape': DROPOUT_SHAPES[0], 'reference_ms': median_ms(gradients(nn.Dropout), xs),
          'cnnjax_ms': median_ms(gradients(layers.Dropout), xs)}


def run() -> dict:
  rng = np.random.default_rng(0)
  rows = []
  for shape in POOL_SHAPES:
    x = jnp.asarray(rng.integers(-3, 4, shape), jnp.float32)  # Ties, as after ReLU.
    g = jnp.asarray(rng.normal(size=_reference_pool(x).shape), jnp.float32)
    grad = lambda pool: jax.grad(lambda x, g: jnp.vdot(pool(x), g))
    np.testing.assert_array_equal(grad(layers.max_pool_2x2)(x, g), grad(_reference_pool)(x, g))
    rows.append({'op': 'max_pool_2x2 forward+backward', 'shape': shape,
                 'reference_ms': median_ms(grad(_reference_pool), x, g),
                 'cnnjax_ms': median_ms(grad(layers.max_pool_2x2), x, g)})
  for n, h, w, cin, cout in CONV_SHAPES:
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(n, h, w, cout)), jnp.float32)
    grads = _gradients(_reference_conv)
    _assert_equal_up_to_summation_order(compilation.jit(grads)(x, kernel, g),
                                        jax.jit(grads)(x, kernel, g))
    rows.append({'op': 'conv3x3 forward+gradients, XLA default vs cnnjax options',
                 'shape': (n, h, w, cin, cout),
                 'reference_ms': median_ms(grads, x, kernel, g, jit=jax.jit),
                 'cnnjax_ms': median_ms(grads, x, kernel, g)})
    rows.extend(_conv_pass_rows(x, kernel, g))
    params = {'kernel': kernel, 'bias': jnp.asarray(rng.normal(size=cout), jnp.float32)}
    g = jnp.asarray(rng.normal(size=(n, h // 2, w // 2, cout)), jnp.float32)
    np.testing.assert_array_equal(_pooling_conv(params, x), _conv_relu_pool(params, x))
    # Random data gives no rounding ties (see layers.PoolingConv): the same gradients, up to
    # the order in which the bias gradient is summed.
    _assert_equal_up_to_summation_order(_gradients(_pooling_conv)(params, x, g),
                                        _gradients(_conv_relu_pool)(params, x, g))
    rows.append({'op': 'conv3x3-ReLU-pool forward+gradients, PoolingConv',
                 'shape': (n, h, w, cin, cout),
                 'reference_ms': median_ms(_gradients(_conv_relu_pool), params, x, g),
                 'cnnjax_ms': median_ms(_gradients(_pooling_conv), params, x, g)})
  for n, h, w, c, stride in DEPTHWISE_SHAPES:
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)
    padding = 'SAME' if stride == 1 else ((0, 1), (0, 1))

    def grouped(x, kernel, stride=stride, padding=padding):
      return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=layers.NHWC,
                                      feature_group_count=x.shape[-1])

    def ours(x, kernel, stride=stride, padding=padding):
      return layers.depthwise_conv(x, kernel, (stride, stride), padding)
    np.testing.assert_allclose(ours(x, kernel), grouped(x, kernel), rtol=1e-4, atol=1e-4)
    g = jnp.asarray(rng.normal(size=ours(x, kernel).shape), jnp.float32)
    _assert_equal_up_to_summation_order(  # Kernel gradients sum N * H * W products.
        _gradients(ours)(x, kernel, g), _gradients(grouped)(x, kernel, g), tolerance=1e-4)
    rows.append({'op': f'depthwise3x3 stride {stride} forward', 'shape': (n, h, w, c),
                 'reference_ms': median_ms(grouped, x, kernel),
                 'cnnjax_ms': median_ms(ours, x, kernel)})
    rows.append({'op': f'depthwise3x3 stride {stride} gradients', 'shape': (n, h, w, c),
                 'reference_ms': median_ms(_gradients(grouped), x, kernel, g),
                 'cnnjax_ms': median_ms(_gradients(ours), x, kernel, g)})
  rows.extend(_image_conv_rows(rng))
  rows.append(_first_block_row(rng))
  rows.append(_dropout_row(rng))
  for row in rows:
    row['ratio'] = row['cnnjax_ms'] / row['reference_ms']
  return {'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()}), '
                    f'jax {jax.__version__}', 'rows': rows}


def format_report(report: dict) -> str:
  lines = [f"Op rewrites and compiler options vs what they replace; {report['device']}",
           'op | shape | reference ms | cnnjax ms | ratio | cnnjax GFLOP/s']
  for row in report['rows']:
    rate = f"{row['cnnjax_gflop_per_s']:.0f}" if 'cnnjax_gflop_per_s' in row else ''
    lines.append(f"{row['op']} | {row['shape']} | {row['reference_ms']:.2f} | "
                 f"{row['cnnjax_ms']:.2f} | {row['ratio']:.2f} | {rate}")
  return '\n'.join(lines)
