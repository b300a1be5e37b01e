"""Study A deeper CNN: three conv blocks with dropout, Dense256 head (436,586 params).

    python -m cnnjax.main --config=configs/cnn_deep.py

Fashion-MNIST, Adam 1e-3, 20 epochs, batch 64. Study test accuracy: 0.9287.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'cnn_deep'
  config.model = 'cnn_deep'
  config.num_epochs = 20
  return config
