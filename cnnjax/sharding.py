"""Data parallelism over every device: one mesh, replicated state, sharded batches.

This is what `pmap` did, in today's form: `jax.jit` over arrays laid out on a
`Mesh` with a 'data' axis. The same code serves 1 CPU, 8 TPU cores or many
hosts; XLA inserts the gradient all-reduce, and BatchNorm statistics are
over the global batch because the step is written for the global batch.
"""
import difflib
import os
import re
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnjax import host_memory
from cnnjax.errors import UserError

DATA_AXIS = 'data'
# The XLA flag the README and the tests use to fake several devices on one CPU.
DEVICE_COUNT_FLAG = 'xla_force_host_platform_device_count'


class BackendError(UserError, RuntimeError):
  """jax cannot start the devices this environment asks for."""


class MultiProcessError(UserError, ValueError):
  """The flags of a multi-process run are inconsistent, or its processes cannot meet."""


_PEER_FLAGS = ('Outside TPU pods and SLURM/Open MPI clusters, start every process with '
               '--multihost --coordinator_address=HOST0:PORT --num_processes=N --process_id=I '
               '(I from 0 to N-1, process 0 on HOST0).')


def check_multiprocess_flags(multihost: bool, coordinator_address: str | None,
                             num_processes: int | None, process_id: int | None) -> None:
  """The flags of a multi-process run, checked before jax is asked to join one: given
  without --multihost they would be ignored, and jax's own errors for them are tracebacks
  (an address without a port is an IndexError)."""
  given = [f'--{name}' for name, value in (('coordinator_address', coordinator_address),
                                           ('num_processes', num_processes),
                                           ('process_id', process_id)) if value is not None]
  if given and not multihost:
    one = len(given) == 1
    raise MultiProcessError(f'{" ".join(given)} {"is" if one else "are"} for a multi-process '
                            'run, which only --multihost starts: add --multihost, or leave '
                            f'{"it" if one else "them"} out to train in this process alone.')
  if num_processes is not None and num_processes < 1:
    raise MultiProcessError(f'--num_processes={num_processes}: give 1 or more. {_PEER_FLAGS}')
  if process_id is not None and (process_id < 0 or (num_processes is not None
                                                    and process_id >= num_processes)):
    top = f'{num_processes - 1}' if num_processes is not None else 'N-1'
    raise MultiProcessError(f'--process_id={process_id}: give 0 to {top}. {_PEER_FLAGS}')
  if coordinator_address is not None and not re.fullmatch(r'.+:\d+', coordinator_address):
    raise MultiProcessError(f'--coordinator_address={coordinator_address} is not HOST:PORT '
                            f'(e.g. 10.0.0.1:1234). {_PEER_FLAGS}')


def start_backend() -> None:
  """Starts jax's devices, so that a backend asked for and not to be had is one line naming
  the fix, not jax's traceback (or its bare AssertionError, for `JAX_PLATFORMS=cuda` where
  no CUDA jax is installed): a command copied from a GPU machine or a notebook set up for
  another runtime. Call it after `initialize_distributed`, before anything else uses jax."""
  check_xla_flags()
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as error:
    reason = (str(error).split(" (set JAX_PLATFORMS=''")[0].rstrip('.')
              or 'no jax for them is installed')
    asked = jax.config.jax_platforms
    if not asked:
      raise BackendError(f'jax cannot start this machine\'s devices: {reason}.') from error
    raise BackendError(
        f'jax cannot start the devices JAX_PLATFORMS={asked} asks for: {reason}. Install '
        'the jax for them (pip install -U "jax[cuda12]" for NVIDIA GPUs, "jax[tpu]" for '
        'TPUs), or unset JAX_PLATFORMS to run on the devices this machine has.') from error
  if jax.process_count() > 1 and jax.default_backend() == 'cpu':
    _connect_cpu_processes_quietly()


def _connect_cpu_processes_quietly() -> None:
  """Connects CPU processes now, with a barrier, while the process's stdout goes nowhere:
  gloo, their collectives, prints '[Gloo] Rank r is connected to n peer ranks...' on it (in
  C++, past Python's logging) when they first talk, ahead of the run's own lines."""
  sys.stdout.flush()
  kept = os.dup(1)
  try:
    with open(os.devnull, 'wb') as nowhere:
      os.dup2(nowhere.fileno(), 1)
    sync_processes('connect')
  finally:
    os.dup2(kept, 1)
    os.close(kept)


def check_xla_flags(xla_flags: str | None = None) -> None:
  """Refuses, in one line, the mistakes in `xla_flags` (default: the environment's
  `XLA_FLAGS`, which a process reads as jax starts its backend) that XLA would end it on
  with a fatal log line (or a page of every flag it has): a misspelt or valueless
  device-count flag, a count that is not a positive whole number, flags without their
  leading '--' (which XLA reads as the name of a file of flags). Other flags are XLA's to
  judge: it knows them, this does not."""
  example = f'XLA_FLAGS=--{DEVICE_COUNT_FLAG}=8'
  if xla_flags is None:
    xla_flags = os.environ.get('XLA_FLAGS', '')
  text = xla_flags.strip()
  if text and not text.startswith('-') and not os.path.isfile(text.split()[0]):
    raise BackendError(
        f'XLA_FLAGS={xla_flags!r} does not start with "--", so XLA would read it as a file of '
        f'flags, and there is none: write each flag as --name=value, as in {example}.')
  for flag in text.split():
    name, has_value, value = flag.lstrip('-').partition('=')
    if name == DEVICE_COUNT_FLAG:
      if not flag.startswith('--') or flag.startswith('---'):
        raise BackendError(f'XLA_FLAGS holds {flag}: XLA flags start with exactly "--", as '
                           f'in {example}.')
      if not (has_value and value.isdigit() and int(value) > 0):
        raise BackendError(f'XLA_FLAGS holds {flag}: the device count must be a whole number '
                           f'of at least 1 (flags are separated by spaces), as in {example}.')
    elif difflib.get_close_matches(name, [DEVICE_COUNT_FLAG], n=1, cutoff=0.85):
      raise BackendError(f'XLA_FLAGS holds {flag}, which XLA does not know: did you mean '
                         f'--{DEVICE_COUNT_FLAG}={value or "N"}?')


def memory_stats() -> dict[str, int]:
  """This process's first device's memory counts (`bytes_limit`, `bytes_in_use`, ...); {}
  where the backend keeps none (the CPU)."""
  try:
    return jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # A backend without the counts.
    return {}


def free_memory_bytes() -> int | None:
  """Bytes the first device can still take: an accelerator's own count, or the host's
  available memory for the CPU (`host_memory`: a container's cap counts); None where
  neither is known."""
  stats = memory_stats()
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  return host_memory.available_bytes()


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run (TPU pod slice, several GPU hosts, or CPU processes).

  On TPU pods and SLURM/Open MPI clusters jax finds the arguments itself;
  elsewhere pass all three (`check_multiprocess_flags` has checked them). CPU
  processes talk through gloo collectives.
  """
  # Only the CPU backend reads this; GPUs and TPUs use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (ValueError, RuntimeError) as error:  # Flags missing; peers that never came.
    reason = ' '.join(str(error).split()).rstrip('.')
    raise MultiProcessError(f'--multihost could not join a multi-process run: {reason}. '
                            f'{_PEER_FLAGS}') from error


def gathered_from_processes(value: float) -> list[float]:
  """`value` as each process has it, in process order (`[value]` in a single-process run):
  what a decision every process must take alike is made from. A collective: every process
  calls it at the same point."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils
  return [float(v) for v in multihost_utils.process_allgather(np.float32(value))]


def sync_processes(name: str) -> None:
  """A barrier across processes (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def create_mesh() -> Mesh:
  # Auto axes: XLA propagates shardings (explicit axes, jax.make_mesh's newer
  # default, would require every op to declare them, which Flax layers do not).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
  """Batches stacked on a leading axis (one per step of a call), each sharded as a batch."""
  return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_size(batch_size: int) -> None:
  """Fails early, with valid alternatives, when the global training batch does not split
  evenly over the devices (and so over the processes, each of which feeds its own)."""
  devices = jax.device_count()
  if batch_size % devices:
    lower = batch_size - batch_size % devices
    options = ' or '.join(f'--config.batch_size={b}' for b in (lower, lower + devices) if b > 0)
    raise ValueError(f'config.batch_size={batch_size} does not divide over the {devices} '
                     f'devices ({jax.devices()[0].platform}); use a multiple of {devices}: '
                     f'pass {options}.')


def round_up_to_devices(size: int) -> int:
  """`size` rounded up to a multiple of the device count (the smallest batch that splits)."""
  devices = jax.device_count()
  return -(-size // devices) * devices


def host_local_rows(mesh: Mesh, global_size: int) -> np.ndarray:
  """The rows of a global batch that this process feeds (all of them on one host).

  They are its devices' shards, in the order `jax.make_array_from_process_local_data`
  expects them (by where they start), read from the sharding's own index map: nothing
  assumes that a process's devices are contiguous in the mesh.
  """
  index_map = batch_sharded(mesh).addressable_devices_indices_map((global_size,))
  shards = sorted({(index[0].start or 0, global_size if index[0].stop is None else index[0].stop)
                   for index in index_map.values()})
  return np.concatenate([np.arange(start, stop) for start, stop in shards])


def put_global_batch(mesh: Mesh, arrays: tuple[np.ndarray, ...], batch_axis: int = 0
                     ) -> tuple[jax.Array, ...]:
  """Makes global, data-sharded arrays from this process's slice of a batch (of batches
  stacked on a leading axis, with `batch_axis=1`)."""
  sharding = stacked_batch_sharded(mesh) if batch_axis else batch_sharded(mesh)
  out = []
  for local in arrays:
    global_shape = list(local.shape)
    global_shape[batch_axis] *= jax.process_count()
    out.append(jax.make_array_from_process_local_data(sharding, local, tuple(global_shape)))
  return tuple(out)
