"""ImageNet weights for the transfer backbones.

`weights` finds, verifies, ports and loads them; `files` keeps the download
cache; `h5` reads Keras .h5 files; `ports` maps Keras layers onto Flax
variables; `python -m cnnjax.pretrained` converts and downloads. This file
imports nothing, so that the command line can take a stop signal in its first
second (jax loads when `weights` or `ports` is imported).
"""
