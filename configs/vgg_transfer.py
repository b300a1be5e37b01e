"""Study A VGG16 transfer: vgg_scratch with the ImageNet backbone frozen.

    python -m cnnjax.main --config=configs/vgg_transfer.py

15,897,168 params, 1,182,480 trainable (input adapter and head); Adam 1e-3,
15 epochs, batch 32. Study test accuracy: 0.9129. The backbone starts from
Keras' ImageNet weights (downloaded once, or --config.pretrained_path=FILE
offline) and sees the learned 1x1 adapter's output of [0, 1] pixels, as in the study.
"""
from configs import vgg_scratch


def get_config():
  config = vgg_scratch.get_config()
  config.name = 'vgg_transfer'
  config.num_epochs = 15
  config.pretrained = 'imagenet'
  config.trainable = r'^(input_adapter|head_hidden|head_logits)/'
  return config
