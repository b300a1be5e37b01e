"""A run found again from its workdir: the config it ran with and its latest state.

`cnnjax.evaluate` and `cnnjax.predict` work on any run that has a checkpoint,
finished or stopped, with nothing but its workdir.
"""
import json
import os

import ml_collections

from cnnjax import writers


class RunNotFoundError(ValueError):
  """The directory holds no run (no config.json) or no checkpoint to use."""


def _as_tuples(value):
  """JSON turned tuples into lists; model options such as hidden_sizes want tuples back."""
  if isinstance(value, list):
    return tuple(_as_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _as_tuples(v) for k, v in value.items()}
  return value


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      config[key] = value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with (its `config.json`).

  Read on top of configs/default.py, so fields added to cnnjax after the run
  was started take their defaults.
  """
  from configs import default
  path = os.path.join(workdir, writers.CONFIG_FILE)
  if not os.path.exists(path):
    raise RunNotFoundError(
        f'{workdir} holds no cnnjax run ({writers.CONFIG_FILE} is missing). Pass the --workdir '
        'of a run started with python -m cnnjax.main.')
  with open(path) as f:
    saved = json.load(f)
  config = default.get_config()
  _merge(config, _as_tuples(saved))
  return config
