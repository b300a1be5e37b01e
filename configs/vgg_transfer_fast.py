"""vgg_transfer_preprocessed with the frozen VGG16's features computed once, not every epoch.

    python -m cnnjax.main --config=configs/vgg_transfer_fast.py

Nothing before the head trains (grey repeated to RGB, 'caffe' preprocessing,
frozen ImageNet VGG16), so the backbone's 3x3x512 features of each image are
the same in every epoch: they are computed once per split and the 15 epochs
train only the head on them. Same model and updates as vgg_transfer_preprocessed
(up to float rounding); compare its speed and accuracy with the faithful
vgg_transfer, whose learned 1x1 adapter makes every step run the whole VGG16.
"""
from configs import vgg_transfer_preprocessed


def get_config():
  config = vgg_transfer_preprocessed.get_config()
  config.name = 'vgg_transfer_fast'
  config.cache_features = True
  return config
