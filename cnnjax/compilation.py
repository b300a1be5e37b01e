"""`jax.jit` with the XLA options cnnjax's steps compile with on each backend.

On CPU, jaxlib 0.10's XLA hands convolutions (and elementwise and reduce
fusions) to YNNPACK by default. On the studies' 3x3 convolutions its kernels
ran slower than XLA's own Eigen convolutions, forward, input gradient and
kernel gradient alike (`experiments/benchmark.py --ops` measures both sides;
figures in `experiments/results/`). So on CPU the steps keep YNNPACK for
matrix products only. GPU and TPU compile as XLA decides, and so do runs over
several CPU devices (`--xla_force_host_platform_device_count`), which are for
testing: there a MobileNetV2 step with the Eigen convolutions drifted from
the one-device step further than with XLA's defaults (not yet understood).
`CNNJAX_XLA_DEFAULTS=1` in the environment gives every step XLA's defaults.

Where these options apply, an evaluation step also runs its batch through the
model in chunks of `EVAL_CHUNK_SIZE` examples, one after the other
(`eval_chunk_size`): the Eigen convolutions of the studies' CNNs evaluated 250
test images 1.4-2x slower in one go than in five chunks of 50, whose
activations stay in the caches (`experiments/results/`). Under YNNPACK the
chunks gained nothing. A chunk's logits are those the whole batch gives.

The options go to each `jit`, not to the process's `XLA_FLAGS`: importing
cnnjax changes nothing else a user compiles. A user's own
`--xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` wins, and an XLA that
no longer knows the option compiles with its defaults (with a warning).
"""
import functools
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
CPU_OPTIONS = {YNN_OPTION: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
EVAL_CHUNK_SIZE = 50


@functools.cache
def compiler_options(backend: str | None = None) -> dict[str, str] | None:
  """The options for `backend` (default: JAX's), or None for XLA's defaults."""
  if (backend or jax.default_backend()) != 'cpu' or YNN_OPTION in os.environ.get('XLA_FLAGS', ''):
    return None
  if (backend is None and jax.device_count() > 1) or os.environ.get('CNNJAX_XLA_DEFAULTS') == '1':
    return None  # Several (forced) CPU devices, or asked for: see the module docstring.
  try:  # An XLA without the option (or the enum value) refuses it at compile time.
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(np.float32(0)).compile()
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('XLA refused %s (%s); CPU convolutions use its defaults.', CPU_OPTIONS,
                    str(error).splitlines()[0])
    return None
  return dict(CPU_OPTIONS)


def eval_chunk_size() -> int | None:
  """Examples an evaluation step runs through the model at once (None: the whole batch)."""
  return EVAL_CHUNK_SIZE if compiler_options() is not None else None


def jit(fun: Callable[..., Any], **kwargs) -> Callable[..., Any]:
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options()`."""
  return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
