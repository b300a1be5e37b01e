"""The op rewrites of cnnjax.models.layers against the ops they replace, in one run.

Max pooling, conv kernel gradients and depthwise convolutions, each against
the XLA op it replaces on CPU.

Each pair is checked for equal results first, then timed (jitted, median
of repeated calls) on the shapes of the studies' CNNs at batch 64.
"""
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.models import layers

POOL_SHAPES = ((64, 28, 28, 32), (64, 14, 14, 64), (64, 7, 7, 128))
DEPTHWISE_SHAPES = ((64, 48, 48, 32, 1), (64, 48, 48, 96, 2), (64, 24, 24, 144, 1),
                    (64, 6, 6, 576, 1))  # MobileNetV2 at 96x96: (N, H, W, C, stride).
CONV_SHAPES = ((64, 28, 28, 1, 32), (64, 28, 28, 32, 32), (64, 14, 14, 32, 64),
               (64, 14, 14, 64, 64), (64, 7, 7, 64, 128))


def median_ms(fn, *args, repeats: int = 30) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def _reference_pool(x):
  return nn.max_pool(x, (2, 2), (2, 2), 'VALID')


def _reference_conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _cnnjax_conv(x, w):
  return layers.conv_with_chunked_kernel_grad(x, w, (1, 1), 'SAME',
                                              dimension_numbers=lax.conv_dimension_numbers(
                                                  x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC')))


def _kernel_grad(conv):
  return jax.grad(lambda w, x, g: jnp.vdot(conv(x, w), g))


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
    ours, ref = _kernel_grad(_cnnjax_conv), _kernel_grad(_reference_conv)
    got, expected = np.asarray(ours(kernel, x, g)), np.asarray(ref(kernel, x, g))
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()  # Summation order.
    rows.append({'op': 'conv3x3 kernel gradient', 'shape': (n, h, w, cin, cout),
                 'reference_ms': median_ms(ref, kernel, x, g),
                 'cnnjax_ms': median_ms(ours, kernel, x, g)})
  for n, h, w, c, stride in DEPTHWISE_SHAPES:
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)
    padding = 'SAME' if stride == 1 else ((0, 1), (0, 1))

    def grouped(x, kernel, stride=stride, padding=padding):
      return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=x.shape[-1])

    def ours(x, kernel, stride=stride, padding=padding):
      return layers.depthwise_conv(x, kernel, (stride, stride), padding)
    np.testing.assert_allclose(ours(x, kernel), grouped(x, kernel), rtol=1e-4, atol=1e-4)
    g = jnp.asarray(rng.normal(size=ours(x, kernel).shape), jnp.float32)
    train = lambda conv: jax.grad(lambda x, k, g: jnp.vdot(conv(x, k), g), argnums=(0, 1))
    rows.append({'op': f'depthwise3x3 stride {stride} forward', 'shape': (n, h, w, c),
                 'reference_ms': median_ms(grouped, x, kernel),
                 'cnnjax_ms': median_ms(ours, x, kernel)})
    rows.append({'op': f'depthwise3x3 stride {stride} gradients', 'shape': (n, h, w, c),
                 'reference_ms': median_ms(train(grouped), x, kernel, g),
                 'cnnjax_ms': median_ms(train(ours), x, kernel, g)})
  for row in rows:
    row['ratio'] = row['cnnjax_ms'] / row['reference_ms']
  return {'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()}), '
                    f'jax {jax.__version__}', 'rows': rows}


def format_report(report: dict) -> str:
  lines = [f"Op rewrites vs the ops they replace; {report['device']}",
           'op | shape | reference ms | cnnjax ms | ratio']
  for row in report['rows']:
    lines.append(f"{row['op']} | {row['shape']} | {row['reference_ms']:.2f} | "
                 f"{row['cnnjax_ms']:.2f} | {row['ratio']:.2f}")
  return '\n'.join(lines)
