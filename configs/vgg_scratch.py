"""Study A VGG16 from scratch: resize 28->96, 1x1 conv to 3 channels, VGG16, Dense256 head.

    python -m cnnjax.main --config=configs/vgg_scratch.py

Random (glorot-uniform) init, everything trains (15,897,168 params); Adam 1e-3,
30 epochs, batch 32. The study never left chance: test accuracy 0.0969.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'vgg_scratch'
  config.model = 'vgg16_classifier'
  config.num_epochs = 30
  config.batch_size = 32
  config.eval_batch_size = 250
  return config
