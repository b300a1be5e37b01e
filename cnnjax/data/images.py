"""One conversion of any image file into a dataset's uint8 (H, W, C) shape.

Training folders, streamed batches, TFDS images of varying size and
`cnnjax.predict` all convert through `fit`, so an image is the same array
whichever path read it. The policy, as Keras' `image_dataset_from_directory`
by default: EXIF orientation applied; 16/32-bit grey scaled (not clipped) to
8 bits; any mode (grey, RGB, RGBA, palette, CMYK, ...) converted to grey or
RGB, transparency dropped; then stretched to the target height and width with
bilinear interpolation (the aspect ratio is not kept, nothing is cropped).
"""
import functools
import io
import struct
from typing import Any, Callable

import numpy as np

from cnnjax.errors import UserError


class ImageInputError(UserError, ValueError):
  """An input file is missing or is not an image that can be read; `reason` says why in a
  few words (for a list of skipped files)."""

  def __init__(self, message: str, reason: str = ''):
    super().__init__(message)
    self.reason = reason or message


class ImageSizeError(UserError, ValueError):
  """An image is not the dataset's size where resizing is not allowed."""


def _to_8_bit(image):
  """16-bit and 32-bit integer (and float) grey images as 8-bit grey, scaled, not clipped:
  Pillow's own conversion would clip a 16-bit PNG's values above 255 to white. An integer
  image is scaled by the range of the narrowest type that holds its values (8, 16 or 32
  bits), a float one by 1 or 255. A float image's NaN is black, its infinities black or white
  (a float TIFF may hold them: cast as they were, they warned on the console and came out
  as whatever the cast made of them)."""
  from PIL import Image
  with np.errstate(invalid='ignore'):  # A signalling NaN (flipped bits) flags its cast.
    array = np.asarray(image, np.float64)
  peak = array.max(initial=0.0, where=np.isfinite(array))
  if image.mode == 'F':
    top = 1.0 if peak <= 1.0 else 255.0
  elif image.mode.startswith('I;16') or 255 < peak <= 65535:
    top = 65535.0
  else:
    top = 255.0 if peak <= 255 else 2.0 ** 31 - 1  # Pillow's 'I' is int32.
  scaled = np.nan_to_num(array / top * 255.0 + 0.5, nan=0.0)  # +-inf: the largest floats.
  return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), 'L')


def fit(image, image_shape: tuple[int, int, int], resize: bool = True) -> np.ndarray:
  """A decoded PIL image as uint8 (H, W, C) in `image_shape`, by the module's policy.

  `resize=False`: an image of another size is an error (datasets whose files
  all have one known size, e.g. CIFAR-10 as folders, keep that check).
  """
  from PIL import Image, ImageOps
  height, width, channels = image_shape
  image = ImageOps.exif_transpose(image)
  if image.mode.startswith('I') or image.mode == 'F':
    image = _to_8_bit(image)
  if image.mode == 'P' or image.mode == 'PA':  # Palette transparency: through RGBA.
    image = image.convert('RGBA')
  if image.mode == 'LAB':  # CIELAB (a TIFF from a prepress tool): Pillow converts it to RGB only.
    image = image.convert('RGB')
  image = image.convert({1: 'L', 3: 'RGB'}[channels])
  if image.size != (width, height):
    if not resize:
      raise ImageSizeError(f'is {image.size[0]}x{image.size[1]}; this dataset has '
                           f'{width}x{height} images')
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8).reshape(height, width, channels)


def fit_array(array: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
  """A uint8 (H, W, C) array (a TFDS image of any size) in `image_shape`, by the same policy."""
  from PIL import Image
  if array.shape == tuple(image_shape):
    return array
  mode = {1: 'L', 3: 'RGB', 4: 'RGBA'}[array.shape[-1]]
  return fit(Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2]) if mode == 'L'
                                                  else array), mode), image_shape)


# Pillow refuses an image over 2 x 89.5 million pixels as a possible decompression bomb, and
# warns, in its own format, over 89.5 million: a 108 or 200 MP phone photo. cnnjax reads the
# user's own images, so it refuses only over this many (3 GiB decoded in RGB).
MAX_PIXELS = 2 ** 30
_PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


@functools.cache
def _pillow_set_for_users_images() -> None:
  """Raises Pillow's limit to `MAX_PIXELS` (unless it was set otherwise than Pillow's
  default) and silences its warning below it: the image is read, as the user asked.

  Also silences Pillow's warnings about what a file holds (a TIFF cut short in its
  directory, corrupt EXIF data, a malformed MPO): they reached the console in Python's own
  format, once per kind, among the run's lines. So are the errors it logs before refusing a
  file (a TIFF's 'More samples per pixel than can be decoded', in absl's format), unless
  its logger was set up. A file Pillow then cannot read is skipped and named with its
  reason, as any unreadable image is; one it reads is the image."""
  import logging
  import warnings
  from PIL import Image
  if Image.MAX_IMAGE_PIXELS == _PILLOW_DEFAULT_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # Pillow refuses twice its limit.
  warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)
  warnings.filterwarnings('ignore', category=UserWarning, module=r'PIL\.')
  pillow_logger = logging.getLogger('PIL')
  if pillow_logger.level == logging.NOTSET:
    pillow_logger.setLevel(logging.CRITICAL)


# What else Pillow's readers raise on a malformed file, past the errors it means for one: a
# DDS file of a pixel format it does not know was a NotImplementedError's traceback.
_MALFORMED = (NotImplementedError, EOFError, struct.error, IndexError, KeyError, TypeError,
              ArithmeticError)


# The ISO base media brands of HEIC/HEIF stills (what iPhones save), at bytes 8-12 after 'ftyp'.
HEIF_BRANDS = (b'heic', b'heix', b'hevc', b'hevx', b'heim', b'heis', b'mif1', b'msf1')


def _is_heif(head: bytes) -> bool:
  return head[4:8] == b'ftyp' and head[8:12] in HEIF_BRANDS


@functools.cache
def _heif_readable() -> bool:
  """Whether Pillow reads HEIC/HEIF here: with pillow-heif installed (cnnjax's `heif` extra),
  its opener is registered once."""
  try:
    import pillow_heif
  except ImportError:
    return False
  pillow_heif.register_heif_opener()
  return True


def _opened(source: bytes | str, use: Callable[[Any], Any]) -> Any:
  """`use(image)` of the image in `source` (its bytes, or its file's path); an
  `ImageInputError` says in a few words why Pillow cannot read it."""
  from PIL import Image, UnidentifiedImageError
  _pillow_set_for_users_images()
  head = None  # The first bytes, to tell HEIF and empty files by.
  try:
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, 'rb')) as f:
      head = f.read(12)
      if _is_heif(head):
        _heif_readable()
      f.seek(0)
      with Image.open(f) as image:
        return use(image)
  except Image.DecompressionBombError as e:
    raise ImageInputError(f'is too large to be read safely ({e}); downscale it (it is '
                          'stretched to the dataset\'s image size anyway)',
                          'too large to be read safely') from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) + _MALFORMED as e:
    if isinstance(e, ImageSizeError):
      raise
    if head == b'':
      reason = 'the file is empty'
    elif head is not None and _is_heif(head) and not _heif_readable():
      reason = 'HEIC/HEIF (iPhone photos): pip install pillow-heif to read it'
    elif isinstance(e, UnidentifiedImageError):
      reason = 'not in an image format Pillow reads'
    else:
      reason = f'{type(e).__name__}: {e}'
    raise ImageInputError(f'is not an image that can be read ({reason})', reason) from e


def decode(payload: bytes, image_shape: tuple[int, int, int], resize: bool = True
           ) -> np.ndarray:
  """Encoded image bytes as uint8 (H, W, C); a `ValueError` names why they cannot be read."""
  return _opened(payload, lambda image: fit(image, image_shape, resize))


def header_problem(source: bytes | str) -> str:
  """Why the image in `source` (its bytes, or its file's path) cannot be read, from its
  header alone; '' where it can (a streamed split checks each file so before training, and
  decodes it later)."""
  try:
    _opened(source, lambda image: None)
  except ImageInputError as e:
    return e.reason
  return ''


def load_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """The image file `path` as uint8 (H, W, C) in `image_shape` (for `cnnjax.predict`)."""
  try:
    with open(path, 'rb') as f:
      payload = f.read()
  except FileNotFoundError as e:
    raise ImageInputError(f'{path} does not exist.') from e
  try:
    return decode(payload, image_shape)
  except ImageInputError as e:
    raise ImageInputError(f'{path} {e}.', e.reason) from e
