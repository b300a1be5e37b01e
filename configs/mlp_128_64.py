"""Study A dense baseline: Flatten, Dense128, Dense64, Dense10 (109,386 params).

    python -m cnnjax.main --config=configs/mlp_128_64.py

Fashion-MNIST, Adam 1e-3, 10 epochs, batch 64. Study test accuracy: 0.8850.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'mlp_128_64'
  config.model = 'mlp'
  config.model_kwargs.hidden_sizes = (128, 64)
  return config
