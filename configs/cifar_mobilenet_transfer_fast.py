"""cifar_mobilenet_transfer with the frozen stage trained on cached MobileNetV2 features.

    python -m cnnjax.main --config=configs/cifar_mobilenet_transfer_fast.py

The study's model, data and two stages. During the 15 frozen epochs nothing
before the head trains, so the backbone's 3x3x1280 features of each image are
computed once and the head trains on them; the 10 fine-tuning epochs, in which
the top blocks train, run on the images. Same updates as cifar_mobilenet_transfer
up to float rounding.
"""
from configs import cifar_mobilenet_transfer


def get_config():
  config = cifar_mobilenet_transfer.get_config()
  config.name = 'cifar_mobilenet_transfer_fast'
  config.cache_features = True
  return config
