"""Beyond study B: a wider BatchNorm CNN with augmentation and a modern recipe.

    python -m cnnjax.main --config=configs/cifar10_best.py

cnn_deep's plan widened for colour images: three blocks of two 3x3 convs (48, 96 and 192
filters), each followed by BatchNorm and ReLU, max pooling after each block, a Dense256
head; trained on all 50,000 training images with random crop (4-pixel padding) and
horizontal flip on the device, SGD with Nesterov momentum and weight decay, one epoch of
warmup then cosine decay, label smoothing, an EMA of the weights, and flip test-time
augmentation. Measured runs: experiments/results/cifar10.md.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'cifar10_best'
  config.dataset = 'cifar10'
  config.model = 'cnn_deep'
  config.model_kwargs.batch_norm = True
  config.model_kwargs.block_features = ((48, 48), (96, 96), (192, 192))
  config.model_kwargs.block_dropout = 0.0
  config.model_kwargs.head_dropout = 0.3
  config.batch_size = 128
  config.num_epochs = 18
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 390            # One epoch of 50,000 / 128.
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.augment.crop_padding = 4
  config.augment.flip = True
  config.augment.flip_test = True
  return config
