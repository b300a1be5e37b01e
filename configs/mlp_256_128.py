"""Study A dense baseline: Flatten, Dense256, Dense128, Dense10 (235,146 params).

    python -m cnnjax.main --config=configs/mlp_256_128.py

Fashion-MNIST, Adam 1e-3, 10 epochs, batch 64 (epochs and batch not stated by the
study; chosen to match its CNNs). Study test accuracy: 0.8898.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'mlp_256_128'
  config.model = 'mlp'
  config.model_kwargs.hidden_sizes = (256, 128)
  return config
