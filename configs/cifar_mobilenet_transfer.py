"""Study B MobileNetV2 transfer: resize 32->96, frozen ImageNet MobileNetV2, Dense256 head,
then fine-tuning of the backbone's top blocks.

    python -m cnnjax.main --config=configs/cifar_mobilenet_transfer.py

Same data and validation hold-out as cifar_cnn. Stage 1 (transfer): 15 epochs
with the backbone frozen, 5,209,930 params of which 2,951,946 train; Adam
1e-3, batch 64 (not stated by the study). Stage 2 (fine_tune): 10 more epochs
with the backbone's Keras layers[100:] also trainable, as the Keras tutorial's
`fine_tune_at = 100` (from block_11_expand_relu on: block_11's depthwise and
project layers, blocks 12-16 and Conv_1; block_11_expand stays frozen),
Adam 1e-5, unfrozen BatchNorms kept in inference mode. Study validation accuracy: 0.89.
The backbone starts from Keras' ImageNet weights (downloaded once, or
--config.pretrained_path=FILE offline) and sees [0, 1] pixels, as in the study.
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
  config.pretrained = 'imagenet'
  config.trainable = r'^(head_hidden|head_logits)/'
  config.fine_tune.num_epochs = 10
  config.fine_tune.learning_rate = 1e-5
  config.fine_tune.unfreeze_from = 'block_11_expand_relu'  # Keras' layers[100]: fine_tune_at.
  return config
