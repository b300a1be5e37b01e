"""Building blocks shared by the models, with Keras' defaults.

The studies were written in Keras, so every layer here starts from what Keras
would have given it: glorot-uniform kernels, zero biases, and BatchNorm with
epsilon 1e-3 / momentum 0.99 unless a model says otherwise. Matching these
is what makes parameter counts, initial losses and ported weights agree.
"""
import functools
import math
import operator
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

keras_kernel_init = nn.initializers.glorot_uniform()
keras_bias_init = nn.initializers.zeros


# The CPU convolutions of small images (see `conv_general_dilated`): at most this many
# input channels, output features and input pixels.
PATCHES_MAX_CHANNELS, PATCHES_MAX_FEATURES, PATCHES_MAX_PIXELS = 3, 32, 32 * 32
NHWC = ('NHWC', 'HWIO', 'NHWC')


class Dense(nn.Dense):
  """`nn.Dense` with Keras' default initialisers."""
  kernel_init: Callable = keras_kernel_init
  bias_init: Callable = keras_bias_init


def _window_patches(x: jax.Array, kernel_size: tuple[int, int]) -> jax.Array:
  """(N, H, W, C) -> (N, H - kh + 1, W - kw + 1, kh * kw * C): each output position's
  'valid' window, flattened in the order of a (kh, kw, C, O) kernel's first three axes."""
  kh, kw = kernel_size
  out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return jnp.concatenate([x[:, i:i + out_h, j:j + out_w] for i in range(kh) for j in range(kw)],
                         axis=-1)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, small_image_conv: Callable | None = None,
                         **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`; on CPU, the stride-1 NHWC convolution of a small image (the
  `PATCHES_MAX_*` bounds) is `small_image_conv(lhs, rhs, padding)` instead: by default
  `taps_conv`, whose gradients are `patches_conv`'s.

  XLA:CPU's convolution has too little to multiply per pixel with one or three
  input channels, and its kernel gradient transposes the output gradient, the
  layer's largest tensor, first. The patches (kh * kw * C values per pixel) are
  small for such inputs, and the matrix product and its gradient read the
  output gradient as it lies (`experiments/benchmark.py --ops` times both ways;
  figures in `experiments/results/`). The studies' first layers (28x28x1 and
  32x32x3 to 32 features) run faster so; with 64 features, or on 96x96 and
  larger images, the patches' kernel gradient was the slower one, so those stay
  XLA's. Same values and gradients up to float summation order. Other backends,
  and every other convolution, go to XLA.
  """
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if (jax.default_backend() != 'cpu' or lhs.ndim != 4 or tuple(window_strides) != (1, 1)
      or dilated or feature_group_count != 1 or kwargs
      or lhs.shape[-1] > PATCHES_MAX_CHANNELS or rhs.shape[-1] > PATCHES_MAX_FEATURES
      or lhs.shape[1] * lhs.shape[2] > PATCHES_MAX_PIXELS or dimension_numbers is None
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  return (small_image_conv or taps_conv)(lhs, rhs, padding)


def _padded(x: jax.Array, kernel_size: tuple[int, int],
            padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel_size, (1, 1), padding)
  return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def taps_conv(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]]
              ) -> jax.Array:
  """The stride-1 NHWC / HWIO convolution of a few-channel `x` as a sum over the kernel's
  taps, each a shifted slice of `x` times a row of the kernel; gradients as `patches_conv`.

  Elementwise arithmetic that XLA fuses into what consumes the convolution
  (bias, activation, the next layer's transposed copy of its input, the
  activation's gradient), recomputing it from the small input instead of
  writing the layer's output from a matrix product and reading it back each
  time. `cnn_deep`'s training step, whose first layer feeds a ReLU and a 28x28
  convolution, ran faster this way than with `patches_conv` (`experiments/benchmark.py`;
  figures in `experiments/results/`). Before a pooling (`PoolingConv`) the fused
  reduction was the slower one, so there the product of patches stays. Sums in
  float32 whatever the compute dtype.
  """
  return _taps_conv_valid(_padded(x, kernel.shape[:2], padding), kernel)


@jax.custom_vjp
def _taps_conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  kh, kw, channels, _ = kernel.shape
  out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  x32, kernel32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
  taps = (x32[:, i:i + out_h, j:j + out_w, c:c + 1] * kernel32[i, j, c]
          for i in range(kh) for j in range(kw) for c in range(channels))
  return functools.reduce(operator.add, taps).astype(jnp.result_type(x, kernel))


def _taps_conv_valid_fwd(x, kernel):
  return _taps_conv_valid(x, kernel), (x, kernel)


def _taps_conv_valid_bwd(residuals, grad):
  """`patches_conv`'s gradients: one product for the kernel's, where a sum over taps would
  read the output gradient once per tap."""
  _, pullback = jax.vjp(lambda x, kernel: patches_conv(x, kernel, 'VALID'), *residuals)
  return pullback(grad)


_taps_conv_valid.defvjp(_taps_conv_valid_fwd, _taps_conv_valid_bwd)


def patches_conv(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]]
                 ) -> jax.Array:
  """The stride-1 NHWC / HWIO convolution of `x` as its patches times the kernel."""
  kh, kw, channels, features = kernel.shape
  patches = _window_patches(_padded(x, (kh, kw), padding), (kh, kw))
  return _patches_matmul(patches, kernel.reshape(kh * kw * channels, features))


@jax.custom_vjp
def _patches_matmul(patches: jax.Array, kernel: jax.Array) -> jax.Array:
  """(N, H, W, K) patches times a (K, O) kernel.

  The kernel's gradient is written out as one product contracting every
  position of the patches and of the output gradient as they lie: from JAX's
  own rule for `matmul`, XLA laid the output gradient out transposed (a copy of
  the layer's largest tensor) and `cnn_simple`'s step became 1.4x slower than
  with the convolution, not faster.
  """
  return patches @ kernel


def _patches_matmul_fwd(patches, kernel):
  return patches @ kernel, (patches, kernel)


def _patches_matmul_bwd(residuals, grad):
  patches, kernel = residuals
  grad_kernel = lax.dot_general(patches.reshape(-1, patches.shape[-1]),
                                grad.reshape(-1, grad.shape[-1]), (((0,), (0,)), ((), ())))
  return grad @ kernel.T, grad_kernel  # A first layer's input gradient is left to XLA's DCE.


_patches_matmul.defvjp(_patches_matmul_fwd, _patches_matmul_bwd)


class Conv(nn.Conv):
  """`nn.Conv` with Keras' default initialisers (and `conv_general_dilated` above)."""
  kernel_init: Callable = keras_kernel_init
  bias_init: Callable = keras_bias_init
  conv_general_dilated: Callable = conv_general_dilated


def _windows_2x2(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C), a free reshape (an odd last row or column is
  dropped, as 'valid' pooling does)."""
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Keras `MaxPooling2D()`: 2x2 windows, stride 2, 'valid' (odd edges dropped).

  Same values and gradients as `nn.max_pool`, whose gradient goes to the
  first maximum of each window (row-major), computed as a reshape and a max:
  XLA:CPU's select-and-scatter, the gradient of `nn.max_pool`, is many times
  slower (`experiments/benchmark.py --ops`; figures in `experiments/results/`).
  """
  return _windows_2x2(x).max(axis=(2, 4))


def _max_pool_2x2_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_2x2_bwd(residuals, grad):
  x, y = residuals
  n, h, w, c = x.shape
  is_max = _windows_2x2(x) == y[:, :, None, :, None, :]
  taken = jnp.zeros_like(y, bool)
  first = {}
  for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # Row-major, as select-and-scatter scans.
    first[i, j] = is_max[:, :, i, :, j] & ~taken
    taken = taken | is_max[:, :, i, :, j]
  rows = [jnp.stack([first[i, 0], first[i, 1]], axis=3) for i in (0, 1)]
  mask = jnp.stack(rows, axis=2)  # (N, H//2, 2, W//2, 2, C)
  grad_x = jnp.where(mask, grad[:, :, None, :, None, :], 0).astype(grad.dtype)
  grad_x = grad_x.reshape(n, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(grad_x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective avalanche of uint32 words (xor-shift-multiply, 'lowbias32' constants)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Pseudo-random uint32 bits of `shape`, a hash of (key, each element's position).

  Elementwise integer arithmetic on an iota over the whole (global) array, so
  XLA fuses it into the op that uses the bits, and a batch sharded over any
  number of devices gets the same bits at the same example and unit.
  """
  words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  words = words.reshape(-1).astype(jnp.uint32)
  seed = _mix32(words[0] ^ jnp.uint32(0x9E3779B9))
  for word in words[1:]:
    seed = _mix32(seed ^ word)
  size = math.prod(shape)
  if size >= 2 ** 32:
    raise ValueError(f'hash_bits: {size} elements do not fit a uint32 position.')
  position = lax.iota(jnp.uint32, size).reshape(shape)
  return _mix32(_mix32(position * jnp.uint32(0x9E3779B9) + seed) ^ (seed >> 7))


class Dropout(nn.Module):
  """`nn.Dropout` (inverted: kept units scaled by 1 / (1 - rate)) with hashed masks.

  Flax draws its masks with the threefry generator, whose rounds cost CPU steps
  several times what the masks' own multiply does (`experiments/benchmark.py
  --ops` times both). Here the mask is a hash of the layer's 'dropout' key and
  each unit's position in the global batch (`hash_bits`), a few fused integer
  operations; the masks are therefore the same on 1, 2 or 8 devices, as the
  multi-device equivalence needs. A unit is kept when its 32 bits fall below
  round((1 - rate) * 2**32).
  """
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    threshold = jnp.uint32(min(round(keep * 2 ** 32), 2 ** 32 - 1))
    mask = hash_bits(self.make_rng('dropout'), x.shape) < threshold
    return lax.select(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class PoolingConv(nn.Module):
  """A `Conv` (stride 1) and the 2x2 max pool after its ReLU, with the bias added after pooling.

  `ReLU()(PoolingConv(...)(x))` equals `max_pool_2x2(ReLU()(Conv(...)(x)))`
  bitwise in value: adding a channel's bias and ReLU are both monotone, also
  in float rounding, so they commute with a max. Gradients are the same too,
  but for one case: where rounding makes y + b tie within a window although
  the conv outputs y did not (y = 1 and 1 + 2^-23 with b = 1 both give 2),
  Conv-ReLU-pool sends the window's gradient to the first of the tied
  elements and PoolingConv to the largest y. Both are gradients of the same
  max; the window's total is the same. Pooling first runs the bias, the ReLU
  and their gradients on a quarter of the elements. Parameters and their
  initial values are `Conv`'s, under the same name. A ReLU after it sees (and
  reports statistics of) pooled activations.
  """
  features: int
  kernel_size: tuple[int, int]
  padding: str = 'SAME'
  kernel_init: Callable = keras_kernel_init
  bias_init: Callable = keras_bias_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_general_dilated(x, kernel, (1, 1), self.padding, dimension_numbers=NHWC,
                             small_image_conv=patches_conv)  # See `taps_conv`.
    return max_pool_2x2(y) + bias


def flatten(x: jax.Array) -> jax.Array:
  """Keras `Flatten` for channels-last input (row-major over H, W, C)."""
  return x.reshape((x.shape[0], -1))


def is_trainable(path: Sequence[str], trainable_pattern: str) -> bool:
  """Whether the parameter at `path` trains under `config.trainable`.

  One rule for the optimizer (which params get gradients) and for BatchNorm
  (which layers update their statistics), so the two never disagree.
  """
  return re.search(trainable_pattern, '/'.join(path)) is not None


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  """Depthwise conv (kernel (kh, kw, 1, C)) as a sum of shifted, scaled copies of `x` on CPU.

  Same values and gradients (up to float summation order) as
  `lax.conv_general_dilated(..., feature_group_count=C)`, which XLA:CPU runs
  far slower for MobileNetV2's layers (`experiments/benchmark.py --ops`;
  figures in `experiments/results/`). Other backends keep the grouped convolution.
  """
  channels = x.shape[-1]
  if jax.default_backend() != 'cpu':
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=NHWC, feature_group_count=channels)
  kh, kw = kernel.shape[:2]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + strides[0] * (out_h - 1) + 1,
                                        j + strides[1] * (out_w - 1) + 1, channels),
                      (1, strides[0], strides[1], 1)) * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


class DepthwiseConv(nn.Module):
  """Keras `DepthwiseConv2D` (multiplier 1, no bias), stored as a Flax grouped conv's
  (kh, kw, 1, C) kernel with the same initialisation as `nn.Conv(feature_group_count=C)`."""
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = 'SAME'
  kernel_init: Callable = keras_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, tuple(self.kernel_size) + (1, x.shape[-1]),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return depthwise_conv(x, kernel, tuple(self.strides), self.padding)


class KerasBatchNorm(nn.BatchNorm):
  """BatchNorm that behaves like a Keras `BatchNormalization` layer.

  Keras runs a BatchNorm layer in inference mode (moving statistics, no
  update) both at evaluation and whenever the layer is frozen
  (`trainable=False`), which is how frozen transfer backbones work. The
  layer decides that from its own parameter path and the run's trainable
  pattern, the same rule the optimizer uses. Defaults are Keras' (epsilon
  1e-3, momentum 0.99); Flax's momentum has the same meaning as Keras'.
  """
  epsilon: float = 1e-3
  momentum: float = 0.99
  # Keras computes the variance as E[(x - mean)^2]; Flax's fast E[x^2] - mean^2
  # cancels catastrophically when the variance is small next to the mean.
  use_fast_variance: bool = False
  trainable_pattern: str = '.*'

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:  # pytype: disable=signature-mismatch
    frozen = not is_trainable(self.path + ('scale',), self.trainable_pattern)
    return super().__call__(x, use_running_average=not train or frozen)


DIAGNOSTICS = 'diagnostics'  # The collection ReLU statistics are sown into (see `ReLU`).
KERNEL_INITS = {'glorot_uniform': keras_kernel_init, 'he_normal': nn.initializers.he_normal()}


def activation_statistics(y: jax.Array) -> dict[str, jax.Array]:
  """Mean, std, and the fraction of units (channels) that are zero for the whole batch."""
  per_unit_max = y.reshape(-1, y.shape[-1]).max(axis=0)
  return {'mean': y.mean(), 'std': y.std(), 'dead_fraction': jnp.mean(per_unit_max <= 0)}


class ReLU(nn.Module):
  """ReLU (or ReLU6) that reports its activation statistics when asked.

  With the `diagnostics` collection mutable (`cnnjax.diagnose`, the collapse
  guard) each ReLU sows `activation_statistics` of its output; otherwise
  nothing is computed. No parameters: models keep their parameter paths.
  """
  max_value: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(x) if self.max_value is None else jnp.clip(x, 0.0, self.max_value)
    if self.is_mutable_collection(DIAGNOSTICS):
      self.sow(DIAGNOSTICS, 'activations', activation_statistics(y))
    return y

