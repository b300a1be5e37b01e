"""Data augmentation on the device, inside the jitted training step.

Random crop with padding, horizontal flip and random erasing (Zhong et al.,
2020: a rectangle of random area and aspect filled with noise) act on the
global batch of [0, 1] images. Each example draws from its own key, split
from the step's key by its position in the global batch, so a batch is
augmented the same on 1 or 8 devices, and the step's key comes from (seed,
step) like dropout's: a resumed run augments exactly as an uninterrupted one.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

# Random erasing's ranges, as in the paper: area fraction and aspect ratio of the rectangle.
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What the training step does to each batch (config.augment); all off = the studies."""
  crop_padding: int = 0       # Pad by this many pixels (zeros), crop back at a random offset.
  flip: bool = False          # Mirror left-right with probability 1/2.
  erasing_prob: float = 0.0   # Erase a random rectangle with this probability.

  @property
  def active(self) -> bool:
    return bool(self.crop_padding or self.flip or self.erasing_prob)


@dataclasses.dataclass(frozen=True)
class TestViews:
  """Test-time augmentation (config.augment.flip_test, translate_test); none = one view."""
  flip: bool = False          # Also the mirror image.
  translate: int = 0          # Also two copies shifted by this many pixels (see `test_logits`).


def test_logits(predict: Callable[[jax.Array], jax.Array], images: jax.Array,
                views: TestViews) -> jax.Array:
  """float32 logits of `images` (N, H, W, C), averaged over the test-time views.

  With `flip`, each view counts with its mirror (the mean of both). With
  `translate` = p, the images are padded by p reflected pixels and cropped back
  shifted by p up-left and p down-right: the unshifted view weighs one half and
  each shifted one a quarter, so a model sees translations as large as in training
  without the image's own view losing its say.
  """
  def mirrored(x):
    logits = predict(x).astype(jnp.float32)
    if views.flip:
      logits = (logits + predict(x[:, :, ::-1]).astype(jnp.float32)) / 2
    return logits

  logits = mirrored(images)
  if views.translate:
    p, (height, width) = views.translate, images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
    shifted = (padded[:, :height, :width], padded[:, 2 * p:, 2 * p:])
    logits = logits / 2 + (mirrored(shifted[0]) + mirrored(shifted[1])) / 4
  return logits


def random_crop(key: jax.Array, image: jax.Array, padding: int) -> jax.Array:
  """One (H, W, C) image padded by `padding` zeros and cropped back at a random offset."""
  height, width, channels = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def random_erasing(key: jax.Array, image: jax.Array, prob: float) -> jax.Array:
  """With probability `prob`, a rectangle of the image replaced by uniform noise."""
  height, width, _ = image.shape
  k_apply, k_area, k_aspect, k_y, k_x, k_fill = jax.random.split(key, 6)
  area = jax.random.uniform(k_area, (), minval=ERASING_AREA[0], maxval=ERASING_AREA[1])
  log_aspect = jax.random.uniform(k_aspect, (), minval=jnp.log(ERASING_ASPECT[0]),
                                  maxval=jnp.log(ERASING_ASPECT[1]))
  aspect = jnp.exp(log_aspect)
  size = area * height * width
  h = jnp.clip(jnp.round(jnp.sqrt(size * aspect)), 1, height).astype(jnp.int32)
  w = jnp.clip(jnp.round(jnp.sqrt(size / aspect)), 1, width).astype(jnp.int32)
  top = jax.random.randint(k_y, (), 0, height - h + 1)
  left = jax.random.randint(k_x, (), 0, width - w + 1)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  erase = inside[..., None] & jax.random.bernoulli(k_apply, prob)
  return jnp.where(erase, jax.random.uniform(k_fill, image.shape, image.dtype), image)


def augment(key: jax.Array, images: jax.Array, augmentation: Augmentation) -> jax.Array:
  """The batch `images` (N, H, W, C) in [0, 1], each example augmented with its own key."""
  if not augmentation.active:
    return images

  def one(key, image):
    k_crop, k_flip, k_erase = jax.random.split(key, 3)
    if augmentation.crop_padding:
      image = random_crop(k_crop, image, augmentation.crop_padding)
    if augmentation.flip:
      image = random_flip(k_flip, image)
    if augmentation.erasing_prob:
      image = random_erasing(k_erase, image, augmentation.erasing_prob)
    return image

  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
