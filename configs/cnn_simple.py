"""Study A simple CNN: Conv32-Pool-Conv64-Pool-Dense10 (50,186 params).

    python -m cnnjax.main --config=configs/cnn_simple.py

Fashion-MNIST, Adam 1e-3, 10 epochs, batch 64. Study test accuracy: 0.9100.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'cnn_simple'
  config.model = 'cnn_simple'
  return config
