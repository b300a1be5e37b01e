"""Classifies your own images with a trained run.

    python -m cnnjax.predict --workdir=checkpoints/cnn_simple shirt.png boot.jpg [--json]
    python -m cnnjax.predict --workdir=checkpoints/cnn_simple photos/ 'shots/*.jpg'

A folder stands for the files under it, at any depth, in name order, and a
pattern the shell did not expand for the files it matches; those
that are not readable images are skipped with one warning (a named file that
is not one is an error). Images are decoded and classified a few thousand at
a time, so a folder of any size fits in memory.

Images of any size, grey or colour, are converted as the training data was:
to the dataset's channels (grey for Fashion-MNIST, RGB for CIFAR-10) and
size (bilinear), then scaled to [0, 1]. Prints the top classes with their
probabilities (softmax of the model's logits) from the weights the run reports:
its latest checkpoint's, or its best epoch's where config.selection keeps them
(--weights=last: the latest checkpoint's in any case); with its test-time views
(config.augment.flip_test, translate_test) where it has them, and
config.eval_batch_size images at a time: the classes its evaluation would give.
Fashion-MNIST shows light garments on a black background; a photo on a
white background looks nothing like it.
"""
if __name__ == '__main__':  # From the first moment: the imports and flags take a moment.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(exit_at_once.WRITES_NOTHING))

import argparse  # pylint: disable=wrong-import-position
import glob
import json
import os
import sys

# Nothing heavy above `main`: numpy, jax and the rest load inside `predict`, under the
# handler `main` installs, so that a stop signal while they load ends in its one line too.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

CHUNK_IMAGES = 2048  # Decoded and classified at a time (rounded up to evaluation batches).


def _expanded(paths: list[str]) -> list[tuple[str, bool]]:
  """(path, named) for each of `paths`, where each pattern that names no file itself
  (`photos/*.jpg`, `**/*.png`) stands for the paths it matches, sorted, as a folder stands for
  its files (not named: those that are not images are skipped). The shell of Windows, and a
  quoted argument anywhere, pass patterns on unexpanded. A pattern that matches nothing is an
  error, as a missing file is."""
  from cnnjax.data import images
  expanded = []
  for path in paths:
    if os.path.exists(path) or not glob.has_magic(path):
      expanded.append((path, True))
    elif matches := sorted(glob.glob(path, recursive=True)):
      expanded += [(match, False) for match in matches]
    else:
      raise images.ImageInputError(f'{path} matches no file.')
  return expanded


def image_files(paths: list[str]) -> list[tuple[str, bool]]:
  """(path, named) for each image to classify: a path as given (named), a folder as the
  visible files under it (`image_tree.files_under`), sorted by name, a pattern as the paths it
  matches. A named file that is missing, or whose header is not an image's, is an error here,
  before the model is built."""
  from cnnjax.data import image_tree, images
  files = []
  for path, named in _expanded(paths):
    if os.path.isdir(path):
      found = [os.path.join(path, name) for name in sorted(image_tree.files_under(path))]
      if not found:
        raise images.ImageInputError(f'{path} is a folder with no files in it; pass image '
                                     'files, or a folder that holds them.')
      files += [(file, False) for file in found]
    elif not os.path.exists(path) and '://' in path:
      raise images.ImageInputError(f'{path} is a web address; cnnjax.predict reads files: '
                                   'download the image first (curl -O ADDRESS), then pass its '
                                   'file.')
    elif not os.path.exists(path):
      raise images.ImageInputError(f'{path} does not exist.')
    elif named and (problem := images.header_problem(path)):
      raise images.ImageInputError(f'{path} is not an image that can be read ({problem}).')
    else:
      files.append((path, named))
  return files


def _decoded(files: list[tuple[str, bool]], image_shape: tuple[int, int, int]
             ) -> tuple[list[str], list, list[str]]:
  """The paths and arrays of `files` that decode; a named file that does not is an error, a
  folder's is skipped (its path and why, third)."""
  from cnnjax.data import images
  paths, arrays, skipped = [], [], []
  for path, named in files:
    try:
      arrays.append(images.load_image(path, image_shape))
      paths.append(path)
    except images.ImageInputError as e:
      if named:
        raise
      skipped.append(f'{path} ({e.reason})')
  return paths, arrays, skipped


def predict(workdir: str, paths: list[str], defaults, top: int = 3,
            weights: str = 'best') -> list[dict]:
  """The `top` classes and probabilities for each image in `paths` (files, or folders of them).

  `defaults`: configs/default.py's config, under the run's saved one. `weights`: as for
  `saved.evaluation_state`.
  """
  import logging
  import math
  import numpy as np
  from cnnjax import sharding
  from cnnjax.data import datasets, image_tree, images
  from cnnjax.runs import saved
  from cnnjax.training import setup
  config = saved.load_config(workdir, defaults)
  spec = datasets.saved_spec(workdir, datasets.DataOptions.from_config(config))
  files = image_files(paths)  # Fail early.
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))
  state = saved.evaluation_state(experiment, workdir, config, weights).state
  trainer = experiment.trainer(len(experiment.stages) - 1, sharding.create_mesh(),
                               config.eval_batch_size, on_features=False)
  chunk = math.ceil(CHUNK_IMAGES / trainer.eval_batch_size) * trainer.eval_batch_size
  predictions, skipped = [], []
  for start in range(0, len(files), chunk):
    chunk_paths, arrays, chunk_skipped = _decoded(files[start:start + chunk], spec.image_shape)
    skipped += chunk_skipped
    if not arrays:
      continue
    for path, row in zip(chunk_paths, trainer.probabilities(state, np.stack(arrays))):
      best = np.argsort(row)[::-1][:top]
      predictions.append({'image': path, 'top': [
          {'class': spec.class_names[i], 'index': int(i), 'probability': float(row[i])}
          for i in best]})
  if skipped:
    logging.warning('Skipped %d file(s) that are not readable images: %s.', len(skipped),
                    image_tree.first_few(skipped))
  if not predictions:
    raise images.ImageInputError(f'No readable images in {", ".join(paths)}: '
                                 f'{len(skipped)} file(s), none an image Pillow reads.')
  return predictions


def format_predictions(predictions: list[dict]) -> str:
  """Each image's path on a line of its own (control characters in a name, such as a newline,
  written as escapes; bytes its file system did not decode as `\\xNN`), then its classes."""
  from cnnjax.data import image_tree
  lines = []
  for prediction in predictions:
    lines.append(''.join(c if c.isprintable() else repr(c)[1:-1]
                         for c in image_tree.readable_name(prediction['image'])))
    lines += [f"  {p['class']}: {p['probability']:.4f}" for p in prediction['top']]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  from cnnjax import cli
  parser = cli.ArgumentParser(prog='python -m cnnjax.predict', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, type=os.path.expanduser,
                      help='The run directory (as for cnnjax.main).')
  parser.add_argument('--top', type=int, default=3, help='Classes to print per image.')
  parser.add_argument('--json', action='store_true', help='Print JSON instead of text.')
  cli.add_weights_flag(parser)
  parser.add_argument('images', type=os.path.expanduser, nargs='+', metavar='IMAGE',
                      help='Image files, or folders of them.')
  args = parser.parse_args(argv)
  if args.top < 1:
    parser.error(f'--top={args.top}: print at least 1 class per image.')
  from cnnjax.runs import exit_at_once
  with cli.running_as_tool('cnnjax.predict', exit_at_once.WRITES_NOTHING):
    from cnnjax import sharding
    from configs import default  # Imports take seconds: a stop signal ends them in one line.
    sharding.start_backend()
    predictions = predict(args.workdir, args.images, default.get_config(), args.top,
                          args.weights)
    print(json.dumps(predictions, indent=2) if args.json else format_predictions(predictions))


if __name__ == '__main__':
  main(sys.argv[1:])
