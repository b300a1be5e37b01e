"""vgg_scratch with He initialisation: the one change that fixes its collapse at the start.

    python -m cnnjax.main --config=configs/vgg_scratch_he.py

Keras' default glorot-uniform keeps the variance of a layer's output at
2/(fan_in+fan_out) per input; each ReLU halves it again, so after 13 convs the
signal reaching the head is thousands of times weaker than the input and the
output is uniform. He-normal (variance 2/fan_in) keeps it constant through
ReLU layers. Everything else is vgg_scratch's (Adam 1e-3, no BatchNorm).
"""
from configs import vgg_scratch


def get_config():
  config = vgg_scratch.get_config()
  config.name = 'vgg_scratch_he'
  config.model_kwargs.kernel_init = 'he_normal'
  return config
