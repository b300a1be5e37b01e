"""The user's own image files, converted as the training data was."""
import numpy as np

from cnnjax.errors import UserError


class ImageInputError(UserError, ValueError):
  """An input file is missing or is not an image that can be read."""


def load_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """`path` as uint8 (H, W, C) in the dataset's shape: channels converted, resized bilinearly."""
  from PIL import Image, UnidentifiedImageError
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image = image.convert({1: 'L', 3: 'RGB'}[channels])
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except FileNotFoundError as e:
    raise ImageInputError(f'{path} does not exist.') from e
  except (UnidentifiedImageError, OSError) as e:
    raise ImageInputError(f'{path} is not an image that can be read ({e}).') from e
  return array.reshape(height, width, channels)
