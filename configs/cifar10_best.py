"""Beyond study B: a CNN that pools inside its blocks, with fashion_mnist_best's recipe.

    python -m cnnjax.main --config=configs/cifar10_best.py

cnn_fast (cnnjax/models/fast_cnn.py): a 2x2 patch-whitening stem (filters computed
from the training images, then frozen), then three blocks of conv-pool-conv with 64,
256 and 256 filters, BatchNorm without a learned scale and GELU after every conv, a
global max pool and a linear classifier. Trained on all 50,000 training images
for 20 epochs with fashion_mnist_best's recipe (SGD-Nesterov with weight decay,
one epoch of warmup then cosine decay, an EMA of the weights, flip test-time
augmentation) at a peak learning rate of 0.3, label smoothing 0.2, a 4-pixel crop
padding and flips, no random erasing. Measured runs and how the recipe was chosen
(on a validation split): experiments/results/cifar10.md.
"""
import ml_collections

from configs import fashion_mnist_best


def get_config():
  config = fashion_mnist_best.get_config()
  config.name = 'cifar10_best'
  config.dataset = 'cifar10'
  config.model = 'cnn_fast'
  config.model_kwargs = ml_collections.ConfigDict({
      'stem': 'whitening', 'block_features': (64, 256, 256), 'activation': 'gelu',
      'batchnorm_scale': False, 'logit_scale': 1 / 9})
  # The whitening filters stay as the data made them (with stem='conv', set '.*' again).
  config.trainable = '^(?!stem/kernel)'
  config.num_epochs = 20
  config.learning_rate = 0.3
  config.warmup_steps = 390            # One epoch of 50,000 / 128.
  config.label_smoothing = 0.2
  config.augment.crop_padding = 4
  config.augment.erasing_prob = 0.0
  return config
