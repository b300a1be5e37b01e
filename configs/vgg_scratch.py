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
  config.model_kwargs.image_size = 96           # Keras Resizing(96, 96), bilinear.
  config.model_kwargs.input_adapter = 'conv1x1'  # Learned Conv2D(3, 1x1): grey -> 3 channels.
  config.model_kwargs.preprocessing = 'none'    # The study fed [0, 1] pixels.
  config.model_kwargs.hidden = 256
  config.model_kwargs.dropout = 0.5
  config.num_epochs = 30
  config.batch_size = 32
  return config
