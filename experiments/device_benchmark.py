"""Training throughput of the study configs on the device at hand, three ways, in one run.

    python experiments/device_benchmark.py --fashion_mnist=DIR --cifar10=PATH \
        [--configs=cnn_simple,vgg_scratch] [--json=FILE] [--config.field=value ...]

For each config, `cnnjax.train`'s loop trains its first stage three ways:

- `one_step`: one jitted call per step, each batch read on the host and copied
  (the loop before `config.steps_per_dispatch` and `config.data_on_device`);
- `calls`: `--steps_per_dispatch` steps per call, the training split held on
  the device, batches gathered there (what a GPU or TPU run does by default);
- `calls_bf16`: the same with `config.half_precision` (bfloat16 compute).

Each variant runs `--warmup` steps (compilation), then `--windows` windows of
`--window` steps, each timed to its last step's result. Reported per variant:
the median window's step time, images/s, the epoch time it implies (steps per
epoch x step time; no evaluation), and its ratio to `one_step`, all from this
run. The FLOPs of a training step are XLA's count for the one-step function
as lowered, before any backend rewrites it (a GPU's compiled module hands its
convolutions to cuDNN, whose FLOPs XLA does not count). Backends reached
through PJRT's C API (CUDA, TPU) count no lowered module, so there the count
comes from this script's `--flops_only` run on the host CPU, in a subprocess:
the lowered step is the same module on any backend. The model FLOP
utilisation is FLOPs / step time / the device's dense bfloat16 peak
(`--peak_tflops`, or the table below for known devices). `--flops_only`
prints the FLOP counts without training (any machine: nothing runs).
Pretrained configs train from random weights here: their weights do not
change a step's work.

Bad flags, config fields or data paths end in one line, exit status 2;
SIGINT or SIGTERM in one line, exit status 128 + the signal.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = 'device_benchmark.py'
sys.path.insert(0, REPO_ROOT)

from cnnjax.runs import exit_at_once  # pylint: disable=wrong-import-position  # Light.

if __name__ == '__main__':  # From the first moment: the imports take seconds.
  exit_at_once.from_now(exit_at_once.measuring_stopped(TOOL), fd=2)

import argparse  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

from cnnjax import cli  # pylint: disable=wrong-import-position
from cnnjax.errors import ConfigError  # pylint: disable=wrong-import-position
from cnnjax.runs import atomic  # pylint: disable=wrong-import-position
from cnnjax.runs import workdir as workdir_lib  # pylint: disable=wrong-import-position
from experiments import benchmark  # pylint: disable=wrong-import-position

STUDY_CONFIGS = ('mlp_128_64', 'mlp_256_128', 'mlp_512_256_128', 'cnn_simple', 'cnn_deep',
                 'vgg_scratch', 'vgg_transfer', 'cifar_cnn', 'cifar_mobilenet_transfer')
# Dense (no sparsity) bfloat16 peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {'NVIDIA H100 80GB HBM3': 989.4, 'NVIDIA H200': 989.4,
                    'NVIDIA A100-SXM4-80GB': 312.0, 'NVIDIA A100-SXM4-40GB': 312.0,
                    'Tesla T4': 65.0, 'NVIDIA L4': 121.0, 'TPU v2': 45.0}
VARIANTS = {'one_step': {'steps_per_dispatch': 1, 'data_on_device': 'false'},
            'calls': {'data_on_device': 'true'},
            'calls_bf16': {'data_on_device': 'true', 'half_precision': True}}


def step_flops(trainer, state, image_shape: tuple[int, ...], batch_size: int) -> float | None:
  """XLA's FLOP count of one training step as lowered (None where it gives none)."""
  import jax.numpy as jnp
  images = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.uint8)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  analysis = trainer.train_step.lower(state, images, labels, trainer.empty_metrics()
                                      ).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return float(flops) if flops else None


def flops_on_host(name: str, args) -> float | None:
  """Config `name`'s step FLOPs as this script's `--flops_only` counts them on the CPU
  backend, in a subprocess (None, with a line on stderr saying why, where it gives none)."""
  import subprocess
  command = [sys.executable, os.path.abspath(__file__), '--flops_only', f'--configs={name}',
             f'--fashion_mnist={args.fashion_mnist}', f'--cifar10={args.cifar10}',
             *args.overrides]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  try:
    return json.loads(done.stdout)[name]['step_flops']
  except (ValueError, KeyError, TypeError):
    last = (done.stderr.strip().splitlines() or [f'exit status {done.returncode}'])[-1]
    print(f'{TOOL}: no FLOP count for {name} from the host CPU either ({last}); its MFU is '
          'left out.', file=sys.stderr, flush=True)
    return None


def measure(config, data, args) -> dict:
  """One variant of one config: median step seconds over the timed windows."""
  from cnnjax.data import pipeline
  from cnnjax.training import dispatch
  from cnnjax.training.loop import Loop
  steps_per_epoch = pipeline.steps_per_epoch(len(data.train), config.batch_size)
  trainer, state = benchmark.first_stage(config, data.image_shape, data.num_classes,
                                         steps_per_epoch)
  k = dispatch.steps_per_dispatch(config.steps_per_dispatch, jax.default_backend())
  loop = Loop(state, trainer.empty_metrics(), mesh=trainer.mesh, batch_size=config.batch_size,
              seed=config.seed, steps_per_epoch=steps_per_epoch, steps_per_dispatch=k,
              data_on_device=dispatch.data_on_device(config.data_on_device, data.train,
                                                     jax.default_backend()))

  def run(steps: int) -> float:
    start = time.perf_counter()
    loop.run(trainer, data, loop.step + steps)
    jax.block_until_ready((loop.state, loop.running))
    return time.perf_counter() - start
  compile_seconds = run(args.warmup)
  windows = [run(args.window) / args.window for _ in range(args.windows)]
  step_seconds = statistics.median(windows)
  row = {'steps_per_dispatch': k, 'data_on_device': loop.data_on_device,
         'half_precision': bool(config.half_precision), 'batch_size': config.batch_size,
         'warmup_seconds': compile_seconds, 'window_step_ms': [w * 1e3 for w in windows],
         'step_ms': step_seconds * 1e3, 'images_per_second': config.batch_size / step_seconds,
         'steps_per_epoch': steps_per_epoch, 'epoch_seconds': steps_per_epoch * step_seconds}
  if args.flops and not config.half_precision and k == 1:
    row['step_flops'] = step_flops(trainer, loop.state, data.image_shape, config.batch_size)
  return row


def study_config(name: str, args):
  """Config `name` with the overrides, its data path from the flags, and random weights (the
  same work per step, no weights file needed); checked as `cnnjax.main` checks it."""
  path = os.path.join(REPO_ROOT, 'configs', f'{name}.py')
  if not os.path.exists(path):
    raise ConfigError(f'--configs: no configs/{name}.py (the study configs are '
                      f'{",".join(STUDY_CONFIGS)}).')
  cifar = benchmark.load_config(path, args.overrides).dataset == 'cifar10'
  data_dir = args.cifar10 if cifar else args.fashion_mnist
  return benchmark.check_config(path, [*args.overrides, '--config.pretrained=',
                                       f'--config.local_data_dir={data_dir}'], keras=False)


def flop_counts(args) -> dict:
  """Each config's training-step FLOPs (first stage, XLA's count as lowered): no data read,
  nothing run."""
  from cnnjax import config_validation
  counts = {}
  for name in args.configs.split(','):
    config = study_config(name, args)
    shape = config_validation.nominal_shape(config)  # The study datasets' own shapes.
    trainer, state = benchmark.first_stage(config, shape, config_validation.nominal_classes(
        config), steps_per_epoch=1)
    counts[name] = {'batch_size': config.batch_size,
                    'step_flops': step_flops(trainer, state, shape, config.batch_size)}
  return counts


def benchmark_config(name: str, args) -> dict:
  from cnnjax.data import datasets
  base = study_config(name, args)
  data = datasets.load_dataset(datasets.DataOptions.from_config(base))
  rows = {}
  for variant, fields in VARIANTS.items():
    config = base.copy_and_resolve_references()
    config.steps_per_dispatch = args.steps_per_dispatch
    for field, value in fields.items():
      config[field] = value
    rows[variant] = measure(config, data, args)
  for row in rows.values():
    row['speedup_over_one_step'] = rows['one_step']['step_ms'] / row['step_ms']
  flops = rows['one_step'].get('step_flops')
  if 'step_flops' in rows['one_step'] and flops is None:  # This backend counts none.
    flops = rows['one_step']['step_flops'] = flops_on_host(name, args)
    rows['one_step']['step_flops_counted_on'] = 'cpu'
  peak = args.peak_tflops or PEAK_BF16_TFLOPS.get(jax.devices()[0].device_kind)
  if flops and peak:
    for row in rows.values():
      row['model_flop_utilisation'] = flops / (row['step_ms'] / 1e3) / (peak * 1e12)
  return {'config': name, 'dataset': data.name, 'train_examples': len(data.train),
          'peak_bf16_tflops': peak, 'variants': rows}


def print_report(report: dict) -> None:
  print(f"{report['device']}; jax {report['jax']}; windows of {report['window']} steps, "
        f"median of {report['windows']}")
  print('config | variant | k | batch | step ms | images/s | epoch s | x one_step | MFU')
  for result in report['results']:
    for variant, row in result['variants'].items():
      mfu = row.get('model_flop_utilisation')
      print(f"{result['config']} | {variant} | {row['steps_per_dispatch']} | "
            f"{row['batch_size']} | {row['step_ms']:.3f} | {row['images_per_second']:.0f} | "
            f"{row['epoch_seconds']:.2f} | {row['speedup_over_one_step']:.2f} | "
            + (f'{mfu:.1%}' if mfu is not None else '-'))
    flops = result['variants']['one_step'].get('step_flops')
    if flops:  # At least two significant digits: an MLP's step is hundredths of a GFLOP.
      gflop = flops / 1e9
      shown = f'{gflop:.1f}' if gflop >= 10 else f'{gflop:.2g}'
      print(f"{result['config']}: {shown} GFLOP per training step (XLA's count)")


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(description=__doc__, passthrough=('--config.',),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--fashion_mnist', type=os.path.expanduser,
                      default='', help='Fashion-MNIST IDX files.')
  parser.add_argument('--cifar10', type=os.path.expanduser,
                      default='', help='The CIFAR-10 image tree or archive.')
  parser.add_argument('--configs', default=','.join(STUDY_CONFIGS))
  parser.add_argument('--steps_per_dispatch', type=int, default=0, help='0: the default.')
  parser.add_argument('--warmup', type=int, default=40)
  parser.add_argument('--window', type=int, default=100)
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--peak_tflops', type=float, default=0.0)
  parser.add_argument('--flops', action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument('--flops_only', action='store_true', help='FLOP counts; nothing runs.')
  parser.add_argument('--json', type=os.path.expanduser,
                      default='', help='Also write the report to this file.')
  args = benchmark.parse_with_overrides(parser, argv)
  if min(args.warmup, args.window, args.windows) < 1:  # Compile time kept out of the windows.
    parser.error('--warmup, --window and --windows must be 1 or more.')
  if args.steps_per_dispatch < 0 or args.peak_tflops < 0:
    parser.error('--steps_per_dispatch and --peak_tflops must be 0 (the default) or more.')
  with cli.running_as_tool(TOOL, 'before reporting anything.'):
    if args.json:  # Before the device time is spent, not after.
      workdir_lib.check_file_can_be_written(args.json, '--json')
    from cnnjax import sharding
    sharding.start_backend()
    if args.flops_only:
      print(json.dumps(flop_counts(args), indent=1))
      return
    report = run(args)
  print_report(report)
  if args.json:
    with cli.reporting_user_errors(TOOL):
      with atomic.refusals_reported(args.json):
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
      with atomic.replaced_whole(args.json) as f:
        json.dump(report, f, indent=1)


def run(args) -> dict:
  device = jax.devices()[0]
  report = {'device': f'{jax.device_count()}x {device.device_kind} ({jax.default_backend()})',
            'jax': jax.__version__, 'window': args.window, 'windows': args.windows,
            'overrides': args.overrides, 'results': []}
  for name in args.configs.split(','):
    report['results'].append(benchmark_config(name, args))
    print(json.dumps(report['results'][-1]), flush=True)
  return report


if __name__ == '__main__':
  main()
