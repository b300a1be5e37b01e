"""The studies' Keras models, for side-by-side benchmarks and equivalence tests.

These are the models as the studies wrote them (softmax outputs, Keras'
initialisers), so `experiments/benchmark.py` can time Keras against cnnjax on
the same data and machine, and tests can load cnnjax's weights into them and
compare outputs. Needs keras (the `test` extra); nothing in training imports it.
"""
from typing import Any

import numpy as np
from flax import traverse_util

MODELS = ('mlp', 'cnn_simple', 'cnn_deep', 'cifar_cnn')  # The models `build` has.


def build(config) -> Any:
  """The Keras model of `config` (one of the studies' architectures), uncompiled."""
  import keras
  from keras import layers
  from cnnjax.data import datasets

  spec = datasets.describe(datasets.DataOptions.from_config(config))
  shape, classes = spec.image_shape, len(spec.class_names)
  kwargs = config.model_kwargs
  inputs = keras.Input(shape)
  x = inputs
  if config.model == 'mlp':
    x = layers.Flatten()(x)
    for size in kwargs.get('hidden_sizes', (256, 128)):
      x = layers.Dense(size, activation='relu')(x)
  elif config.model == 'cnn_simple':
    for features in (32, 64):
      x = layers.Conv2D(features, 3, padding='same', activation='relu')(x)
      x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
  elif config.model == 'cnn_deep':
    for block in ((32, 32), (64, 64), (128,)):
      for features in block:
        x = layers.Conv2D(features, 3, padding='same', activation='relu')(x)
      x = layers.MaxPooling2D()(x)
      x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation='relu')(x)
    x = layers.Dropout(0.5)(x)
  elif config.model == 'cifar_cnn':
    for features in (32, 64):
      x = layers.Conv2D(features, 3, padding='valid', activation='relu')(x)
      x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(kwargs.get('hidden', 128), activation='relu')(x)
    x = layers.Dropout(kwargs.get('dropout', 0.3))(x)
  else:
    raise ValueError(f'No Keras reference for model {config.model!r}; the small study models '
                     f'({", ".join(MODELS)}) have one.')
  outputs = layers.Dense(classes, activation='softmax')(x)
  return keras.Model(inputs, outputs, name=config.name)


def compile_like_study(model, config) -> None:
  """Adam(1e-3) and categorical cross-entropy on integer labels, as the studies trained."""
  import keras
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate,
                                                epsilon=config.adam_epsilon),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])


def copy_params(params: dict[str, Any], model) -> None:
  """Loads cnnjax parameters into the Keras model, layer by layer in order.

  Both models list their kernel-bearing layers in the same order with the
  same HWIO / (in, out) layouts, so the i-th Flax layer feeds the i-th Keras one.
  """
  flat = traverse_util.flatten_dict(params)
  layer_names = list(dict.fromkeys(path[:-1] for path in flat))  # Flax creation order.
  keras_layers = [layer for layer in model.layers if layer.weights]
  if len(layer_names) != len(keras_layers):
    raise ValueError(f'{len(layer_names)} Flax layers but {len(keras_layers)} Keras layers.')
  for name, layer in zip(layer_names, keras_layers):
    layer.set_weights([np.asarray(flat[name + ('kernel',)]), np.asarray(flat[name + ('bias',)])])
