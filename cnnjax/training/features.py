"""Caching a frozen backbone's features, so that each epoch trains only the head.

When nothing before or in the backbone trains (an input adapter that repeats
the grey channel or none, a frozen backbone whose BatchNorms stay in
inference mode, no dropout before the head), the backbone maps an image to
the same features in every epoch. `config.cache_features` computes them once
per split and trains the head on them: the same updates, up to float
rounding, for a fraction of the work. A fine-tuning stage, in which the
backbone trains, runs on the images again.
"""
import logging
import time
from typing import Callable, ContextManager

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnnjax import compilation
from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import pipeline
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.models.layers import is_trainable


def head_parameters(model, image_shape: tuple[int, ...]) -> set[tuple[str, ...]]:
  """Paths of the parameters the model's head uses (those a cached run can train)."""
  images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
  features = jax.eval_shape(lambda v: model.apply(v, images, part='features'), variables)
  head = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros(features.shape, features.dtype), part='head'))
  return set(traverse_util.flatten_dict(head['params']))


def check_cacheable(model, image_shape: tuple[int, ...], trainable_pattern: str) -> None:
  """Raises ValueError naming what trains before the head, if anything does."""
  if getattr(model, 'backbone', None) is None:
    raise ValueError('config.cache_features needs a model with a backbone '
                     '(vgg16_classifier, mobilenet_v2_classifier).')
  images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))['params']
  head = head_parameters(model, image_shape)
  before_head = sorted('/'.join(path) for path in traverse_util.flatten_dict(params)
                       if is_trainable(path, trainable_pattern) and path not in head)
  if before_head:
    raise ValueError(
        f'config.cache_features needs everything before the head frozen, but '
        f'config.trainable={trainable_pattern!r} trains {", ".join(before_head[:4])}. Use '
        "model_kwargs.input_adapter='repeat' (or 'none') and a head-only config.trainable.")


def extract(model, variables, split: Split | StreamedSplit, batch_size: int, mesh,
            after_batch: Callable[[int], None], stand_ins_kept: bool = False) -> Split:
  """`split` with each image replaced by the backbone's features of it (float32, host;
  a streamed split's features are held: they are a fraction of its images' size). A
  streamed example that could not be decoded is left out, as evaluation leaves it out, or
  (`stand_ins_kept`, for training: the same examples and steps as training on the images)
  has its stand-in's features and label. `after_batch` is told how many images each batch
  held."""
  extract_batch = compilation.jit(
      lambda v, x, y, m: (model.apply(v, pipeline.to_inputs(x), part='features'), y, m),
      out_shardings=sharding.replicated(mesh))
  features, labels, masks = [], [], []
  for start, batch in zip(range(0, len(split), batch_size),
                          pipeline.eval_batches(split, batch_size, mesh)):
    batch_features, batch_labels, mask = jax.device_get(extract_batch(
        variables, *sharding.put_global_batch(mesh, batch)))
    features.append(np.asarray(batch_features))
    labels.append(np.asarray(batch_labels))
    masks.append(np.asarray(mask))
    after_batch(min(batch_size, len(split) - start))  # The last batch's padding aside.
  counted = np.concatenate(masks)  # Padding and undecodable examples are False.
  if stand_ins_kept:
    counted = np.arange(len(counted)) < len(split)
  return Split(np.concatenate(features)[counted], np.concatenate(labels)[counted],
               split.fingerprint())


def extract_dataset(model, variables, data: datasets.Dataset, batch_size: int, mesh,
                    after_batch: Callable[[int], None]) -> datasets.Dataset:
  """Every split of `data` as backbone features."""
  start = time.perf_counter()
  splits = {name: extract(model, variables, getattr(data, name), batch_size, mesh, after_batch,
                         stand_ins_kept=name == 'train')
            if getattr(data, name) is not None else None for name in ('train', 'val', 'test')}
  logging.info('Cached backbone features %s of %d train, %s val and %d test examples in %.1fs.',
               splits['train'].images.shape[1:], len(data.train),
               len(data.val) if data.val is not None else 'no', len(data.test),
               time.perf_counter() - start)
  return datasets.Dataset(data.name, splits['train'], splits['val'], splits['test'],
                          data.class_names, data.source)


class FeatureCache:
  """What each stage trains on: the images, or its frozen backbone's features, computed the
  first time a stage asks (the backbone stays frozen while caching applies: once per run).

  `watch` is entered around the computation with the number of images it covers, and
  gives the callable told each batch's count: what the run shows of it and where it may
  stop (VGG16's features of Fashion-MNIST take tens of minutes on
  a CPU, before the first step)."""

  def __init__(self, data: datasets.Dataset, batch_size: int, mesh,
               watch: Callable[[int], ContextManager[Callable[[int], None]]]):
    self.data, self.batch_size, self.mesh, self.watch = data, batch_size, mesh, watch
    self.features: datasets.Dataset | None = None
    self.seconds: float | None = None  # Time spent computing the features, once computed.

  def stage_data(self, cache_features: bool, model, variables) -> datasets.Dataset:
    if not cache_features:
      return self.data
    if self.features is None:
      start = time.perf_counter()
      splits = (self.data.train, self.data.val, self.data.test)
      total = sum(len(split) for split in splits if split is not None)
      with self.watch(total) as after_batch:
        self.features = extract_dataset(model, variables, self.data, self.batch_size,
                                        self.mesh, after_batch)
      self.seconds = time.perf_counter() - start
    return self.features
