"""vgg_transfer with VGG16's own ImageNet preprocessing: grey repeated to RGB, then 'caffe'.

    python -m cnnjax.main --config=configs/vgg_transfer_preprocessed.py

Instead of the study's learned 1x1 conv on [0, 1] pixels, the grey channel is
repeated to three and preprocessed as VGG16 was trained (0-255, RGB->BGR,
ImageNet means subtracted). Nothing before the backbone trains: 1,182,474
trainable params (the head). Epochs, batch and optimizer are vgg_transfer's.
"""
from configs import vgg_transfer


def get_config():
  config = vgg_transfer.get_config()
  config.name = 'vgg_transfer_preprocessed'
  config.model_kwargs.input_adapter = 'repeat'
  config.model_kwargs.preprocessing = 'caffe'
  config.trainable = r'^(head_hidden|head_logits)/'
  return config
