"""Beyond study A: cnn_deep widened, with BatchNorm, augmentation and a modern recipe.

    python -m cnnjax.main --config=configs/fashion_mnist_best.py

The study's best model (cnn_deep, 0.9287) with a fourth conv (128 filters) and BatchNorm
after every conv, no dropout in the conv blocks, trained on all 60,000 training images:
random crop (2-pixel padding), horizontal flip and random erasing on the device; SGD with
Nesterov momentum and weight decay, one epoch of warmup then cosine decay; label smoothing;
an EMA of the weights; flip test-time augmentation. Measured runs and what each ingredient
adds: experiments/results/fashion_mnist.md and fashion_mnist_best_ablation.md.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'fashion_mnist_best'
  config.model = 'cnn_deep'
  config.model_kwargs.batch_norm = True
  config.model_kwargs.block_features = ((32, 32), (64, 64), (128, 128))
  config.model_kwargs.block_dropout = 0.0
  config.model_kwargs.head_dropout = 0.3
  config.batch_size = 128
  config.num_epochs = 18
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 469            # One epoch of 60,000 / 128.
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.augment.crop_padding = 2
  config.augment.flip = True
  config.augment.erasing_prob = 0.25
  config.augment.flip_test = True
  return config
