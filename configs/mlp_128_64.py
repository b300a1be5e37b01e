"""Study A dense baseline: Flatten, Dense128, Dense64, Dense10 (109,386 params).

    python -m cnnjax.main --config=configs/mlp_128_64.py

mlp_256_128 with other hidden layers. Study test accuracy: 0.8850.
"""
from configs import mlp_256_128


def get_config():
  config = mlp_256_128.get_config()
  config.name = 'mlp_128_64'
  config.model_kwargs.hidden_sizes = (128, 64)
  return config
