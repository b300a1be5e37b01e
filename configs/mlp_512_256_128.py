"""Study A dense baseline: Flatten, Dense512, Dense256, Dense128, Dense10 (567,434 params).

    python -m cnnjax.main --config=configs/mlp_512_256_128.py

Fashion-MNIST, Adam 1e-3, 10 epochs, batch 64. Study test accuracy: 0.8934.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.name = 'mlp_512_256_128'
  config.model = 'mlp'
  config.model_kwargs.hidden_sizes = (512, 256, 128)
  return config
