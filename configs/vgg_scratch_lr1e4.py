"""vgg_scratch with learning rate 1e-4: the one change that keeps Adam from killing its ReLUs.

    python -m cnnjax.main --config=configs/vgg_scratch_lr1e4.py

Adam at 1e-3 moves every weight by about 1e-3 per step whatever its gradient's
size; in a 16-layer net without normalisation that is enough to push whole
layers of ReLUs below zero, after which they pass no gradient. 1e-4 (optionally
with --config.warmup_steps=1000) trains. Everything else is vgg_scratch's.
"""
from configs import vgg_scratch


def get_config():
  config = vgg_scratch.get_config()
  config.name = 'vgg_scratch_lr1e4'
  config.learning_rate = 1e-4
  return config
