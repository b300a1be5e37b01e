"""The user's own image files, converted as the training data was."""
import numpy as np

from cnnjax.errors import UserError


class ImageInputError(UserError, ValueError):
  """An input file is missing or is not an image that can be read."""


def _to_8_bit(image):
  """16-bit and 32-bit integer (and float) grey images as 8-bit grey, scaled, not clipped:
  Pillow's own conversion would clip a 16-bit PNG's values above 255 to white."""
  from PIL import Image
  array = np.asarray(image, np.float64)
  if image.mode == 'F':
    top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
  else:
    top = 65535.0 if image.mode.startswith('I;16') or array.max(initial=0.0) > 255 else 255.0
  return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), 'L')


def load_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """`path` as uint8 (H, W, C) in the dataset's shape: upright (EXIF orientation applied),
  16-bit scaled to 8, channels converted, resized bilinearly."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      if image.mode.startswith('I') or image.mode == 'F':
        image = _to_8_bit(image)
      image = image.convert({1: 'L', 3: 'RGB'}[channels])
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except FileNotFoundError as e:
    raise ImageInputError(f'{path} does not exist.') from e
  except IsADirectoryError as e:
    raise ImageInputError(f'{path} is a directory; pass image files.') from e
  except Image.DecompressionBombError as e:
    raise ImageInputError(f'{path} is too large to be read safely ({e}).') from e
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise ImageInputError(f'{path} is not an image that can be read ({type(e).__name__}).') from e
  return array.reshape(height, width, channels)
