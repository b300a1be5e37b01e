"""Study B CIFAR-10 CNN: valid convs, Dense128, Dropout .3 (315,722 params).

    python -m cnnjax.main --config=configs/cifar_cnn.py

Adam 1e-3, 20 epochs, batch 64; the last 20% of train is held out for validation.
Study validation accuracy: about 0.71.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'cifar_cnn'
  config.dataset = 'cifar10'
  config.model = 'cifar_cnn'
  config.model_kwargs.hidden = 128
  config.model_kwargs.dropout = 0.3
  config.num_epochs = 20
  config.train_split = 'train[:80%]'
  config.val_split = 'train[80%:]'
  return config
