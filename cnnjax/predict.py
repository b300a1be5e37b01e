"""Classifies your own images with a trained run.

    python -m cnnjax.predict --workdir=checkpoints/cnn_simple shirt.png boot.jpg [--json]

Images of any size, grey or colour, are converted as the training data was:
to the dataset's channels (grey for Fashion-MNIST, RGB for CIFAR-10) and
size (bilinear), then scaled to [0, 1]. Prints the top classes with their
probabilities (softmax of the model's logits) from the weights the run reports:
its latest checkpoint's, or its best epoch's where config.selection keeps them;
with its test-time views (config.augment.flip_test, translate_test) where it
has them, and config.eval_batch_size images at a time: the classes its
evaluation would give.
Fashion-MNIST shows light garments on a black background; a photo on a
white background looks nothing like it.
"""
import argparse
import json
import os
import sys

# Nothing heavy above `main`: a stop signal before its handler is in place would print a
# traceback (numpy, jax and the rest load inside `predict`, under the handler).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def predict(workdir: str, paths: list[str], defaults, top: int = 3) -> list[dict]:
  """The `top` classes and probabilities for each image in `paths`.

  `defaults`: configs/default.py's config, under the run's saved one.
  """
  import numpy as np
  from cnnjax import sharding
  from cnnjax.data import datasets, images
  from cnnjax.runs import saved
  from cnnjax.training import setup
  config = saved.load_config(workdir, defaults)
  spec = datasets.saved_spec(workdir, datasets.DataOptions.from_config(config))
  batch = np.stack([images.load_image(path, spec.image_shape) for path in paths])  # Fail early.
  experiment = setup.build(config, spec.image_shape, len(spec.class_names))
  state = saved.evaluation_state(experiment, workdir, config).state
  trainer = experiment.trainer(len(experiment.stages) - 1, sharding.create_mesh(),
                               config.eval_batch_size, on_features=False)
  probabilities = trainer.probabilities(state, batch)
  predictions = []
  for path, row in zip(paths, probabilities):
    best = np.argsort(row)[::-1][:top]
    predictions.append({'image': path, 'top': [
        {'class': spec.class_names[i], 'index': int(i), 'probability': float(row[i])}
        for i in best]})
  return predictions


def format_predictions(predictions: list[dict]) -> str:
  lines = []
  for prediction in predictions:
    lines.append(prediction['image'])
    lines += [f"  {p['class']}: {p['probability']:.4f}" for p in prediction['top']]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m cnnjax.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, type=os.path.expanduser,
                      help='The run directory (as for cnnjax.main).')
  parser.add_argument('--top', type=int, default=3, help='Classes to print per image.')
  parser.add_argument('--json', action='store_true', help='Print JSON instead of text.')
  parser.add_argument('images', nargs='+', metavar='IMAGE')
  args = parser.parse_args(argv)
  if args.top < 1:
    parser.error(f'--top={args.top}: print at least 1 class per image.')
  from cnnjax import cli
  from cnnjax.runs import preemption
  with cli.running_as_tool('cnnjax.predict', preemption.WRITES_NOTHING):
    from cnnjax import sharding
    from configs import default  # Imports take seconds: a stop signal ends them in one line.
    sharding.start_backend()
    predictions = predict(args.workdir, args.images, default.get_config(), args.top)
    print(json.dumps(predictions, indent=2) if args.json else format_predictions(predictions))


if __name__ == '__main__':
  main(sys.argv[1:])
