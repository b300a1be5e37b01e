"""Your own images: a small CNN on any tree of class folders, at 64x64 RGB.

    python -m cnnjax.main --config=configs/image_folder.py --config.local_data_dir=DIR

DIR (or DIR.tar.gz) holds `train/<class>/*` and `test/<class>/*` (or, in a directory,
images lying in `train/` with their classes in `trainLabels.csv`), and optionally
`val/<class>/*` (pass --config.val_split=val); or hold out part of train with
--config.train_split='train[:90%]' --config.val_split='train[90%:]'. Keras'
layout, `<class>/*` with no split folders, is the train split: take all three
from it (--config.test_split='train[90%:]', ...). The classes
are the train folders' names, sorted. Any image Pillow reads (PNG, JPEG, BMP, WebP,
GIF, TIFF; grey, RGB, RGBA, palette, CMYK) is stretched to image_size x image_size
with bilinear interpolation and converted to `channels`; files that are not
images are skipped with one warning. Larger trees than memory are streamed.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'image_folder'
  config.dataset = 'image_folder'
  config.image_size = 64
  config.channels = 3
  config.train_split = 'train[:90%]'
  config.val_split = 'train[90%:]'
  config.model = 'cifar_cnn'           # Two valid convolutions, Dense128, dropout: any size.
  config.model_kwargs.hidden = 128
  config.model_kwargs.dropout = 0.3
  config.num_epochs = 20
  config.batch_size = 32
  return config
