"""Study A dense baseline: Flatten, Dense512, Dense256, Dense128, Dense10 (567,434 params).

    python -m cnnjax.main --config=configs/mlp_512_256_128.py

mlp_256_128 with other hidden layers. Study test accuracy: 0.8934.
"""
from configs import mlp_256_128


def get_config():
  config = mlp_256_128.get_config()
  config.name = 'mlp_512_256_128'
  config.model_kwargs.hidden_sizes = (512, 256, 128)
  return config
