"""vgg_scratch as VGG16-BN: a BatchNorm after every conv, the one change that makes depth easy.

    python -m cnnjax.main --config=configs/vgg_scratch_bn.py

Each BatchNorm re-centres and re-scales its conv's output over the batch, so
the signal keeps its scale through all 13 convs whatever the initialisation or
learning rate. Adds 13 BatchNorms (16,896 parameters, 8,448 of them moving
statistics). Everything else is vgg_scratch's (glorot-uniform, Adam 1e-3).
"""
from configs import vgg_scratch


def get_config():
  config = vgg_scratch.get_config()
  config.name = 'vgg_scratch_bn'
  config.model_kwargs.batch_norm = True
  return config
