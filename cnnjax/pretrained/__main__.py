"""Command line for ImageNet weights.

    python -m cnnjax.pretrained convert IN.h5 OUT_DIR
        Ports a Keras application .h5 file (VGG16 or MobileNetV2, found from its
        layers) and stores the Flax variables as an orbax checkpoint in OUT_DIR,
        so that GPU/TPU machines without h5py, TensorFlow or network can use it:
        --config.pretrained_path=OUT_DIR.
    python -m cnnjax.pretrained download {vgg16,mobilenet_v2} [--image_size=96]
        Fills the cache ($CNNJAX_CACHE, default ~/.cache/cnnjax) ahead of a run.
"""
# How a stop signal's line ends, whenever it comes.
NOTHING_MADE = 'before it finished: no converted directory or cached weights file was made.'

if __name__ == '__main__':  # From the first moment: the imports take a second or two.
  from cnnjax.runs import exit_at_once
  exit_at_once.from_now(exit_at_once.stop_line(NOTHING_MADE))

import argparse  # pylint: disable=wrong-import-position
import os
import sys

from cnnjax import cli


def convert(source: str, directory: str) -> str:
  from cnnjax.pretrained import h5
  from cnnjax.pretrained import weights
  variables, backbone = weights.port_h5(source)
  weights.save_converted(variables, directory, {
      'backbone': backbone, 'file': os.path.basename(source), 'md5': h5.md5sum(source)})
  return (f'Converted {source} ({backbone}) to {directory}; use it with '
          f'--config.pretrained_path={directory}')


def download(backbone: str, image_size: int) -> str:
  from cnnjax.pretrained import files
  from cnnjax.pretrained import weights
  file = files.imagenet_weights_file(backbone, image_size)
  path = files.ensure_cached(file, lambda p: weights.port_h5(p, backbone))
  return f'{file.name} is in the cache: {path}'


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog='python -m cnnjax.pretrained', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  convert_parser = commands.add_parser('convert', help='Keras .h5 -> orbax checkpoint.')
  convert_parser.add_argument('source', type=os.path.expanduser, metavar='IN.h5')
  convert_parser.add_argument('directory', type=os.path.expanduser, metavar='OUT_DIR')
  download_parser = commands.add_parser('download', help='Fill the weights cache.')
  download_parser.add_argument('backbone', choices=('vgg16', 'mobilenet_v2'))
  download_parser.add_argument('--image_size', type=int, default=96)
  args = parser.parse_args(argv)
  if args.command == 'download' and args.image_size < 1:  # Else 224's file, as for 100.
    download_parser.error(f'--image_size must be 1 or more, not {args.image_size}.')
  # Imports (jax, orbax) take seconds: a stop signal from here on ends in one line.
  with cli.running_as_tool('cnnjax.pretrained', NOTHING_MADE):
    try:
      if args.command == 'convert':
        print(convert(args.source, args.directory))
      else:
        print(download(args.backbone, args.image_size))
    except OSError as e:  # OUT_DIR exists, is a file, is not writable; the cache likewise.
      cli.exit_with_error('cnnjax.pretrained', str(e))
  return 0


if __name__ == '__main__':
  sys.exit(main())
