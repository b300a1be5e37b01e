"""Beyond study B: fashion_mnist_best's recipe, widened for colour images.

    python -m cnnjax.main --config=configs/cifar10_best.py

Three blocks of two 3x3 convs (48, 96 and 192 filters), each followed by BatchNorm and
ReLU, max pooling after each block, a Dense256 head; trained on all 50,000 training images
with fashion_mnist_best's recipe (SGD-Nesterov with weight decay, warmup then cosine decay,
label smoothing, an EMA of the weights, flip test-time augmentation), a 4-pixel crop
padding and no random erasing. Measured runs: experiments/results/cifar10.md.
"""
from configs import fashion_mnist_best


def get_config():
  config = fashion_mnist_best.get_config()
  config.name = 'cifar10_best'
  config.dataset = 'cifar10'
  config.model_kwargs.block_features = ((48, 48), (96, 96), (192, 192))
  config.warmup_steps = 390            # One epoch of 50,000 / 128.
  config.augment.crop_padding = 4
  config.augment.erasing_prob = 0.0
  return config
