"""cifar_mobilenet_transfer with MobileNetV2's own ImageNet preprocessing ('tf': x/127.5 - 1).

    python -m cnnjax.main --config=configs/cifar_mobilenet_transfer_preprocessed.py

The study fed the ImageNet backbone [0, 1] pixels; the weights were trained on
[-1, 1]. Everything else (stages, epochs, optimizer) is cifar_mobilenet_transfer's.
"""
from configs import cifar_mobilenet_transfer


def get_config():
  config = cifar_mobilenet_transfer.get_config()
  config.name = 'cifar_mobilenet_transfer_preprocessed'
  config.model_kwargs.preprocessing = 'tf'
  return config
