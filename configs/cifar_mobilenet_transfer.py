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
  config.num_epochs = 15
  config.eval_batch_size = 250
  config.pretrained = 'imagenet'
  config.trainable = r'^(head_hidden|head_logits)/'
  return config
