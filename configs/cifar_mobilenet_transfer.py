"""Study B MobileNetV2 transfer: resize 32->96, frozen ImageNet MobileNetV2, Dense256 head.

    python -m cnnjax.main --config=configs/cifar_mobilenet_transfer.py

Same data and validation hold-out as cifar_cnn. 5,209,930 params, 2,951,946
trainable while the backbone is frozen; Adam 1e-3, 15 epochs, batch 64 (not
stated by the study). Study validation accuracy: 0.89.
"""
from configs import cifar_cnn


def get_config():
  config = cifar_cnn.get_config()
  config.name = 'cifar_mobilenet_transfer'
  config.model = 'mobilenet_v2_classifier'
  config.model_kwargs.image_size = 96           # Keras Resizing(96, 96), bilinear.
  config.model_kwargs.input_adapter = 'none'    # CIFAR-10 is already RGB.
  config.model_kwargs.preprocessing = 'none'    # The study fed [0, 1] pixels.
  config.model_kwargs.hidden = 256
  config.model_kwargs.dropout = 0.3
  config.num_epochs = 15
  config.eval_batch_size = 250
  config.pretrained = 'imagenet'
  config.trainable = r'^(head_hidden|head_logits)/'
  return config
