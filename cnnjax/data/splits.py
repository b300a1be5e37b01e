"""TFDS split syntax (`train`, `train[:80%]`, `train[10:]+test`) for local arrays.

Local sources honour the same `config.train_split` strings as TFDS, with
TFDS' rounding of percent boundaries (to the closest example), so the same
config selects the same examples whether the data came from TFDS or files.
"""
import difflib
import re
from typing import Callable, Iterable, NamedTuple

from cnnjax.errors import UserError

_PART = re.compile(r'^(?P<name>\w+)(\[(?P<start>[^:\]]*):(?P<stop>[^\]]*)\])?$')
_BOUND = re.compile(r'^(?P<value>-?\d+)(?P<pct>%)?$')


class SplitError(UserError, ValueError):
  """A split string that is not valid syntax, or selects examples a split does not have."""


class SplitPart(NamedTuple):
  """One `name[start:stop]` term; boundaries as written (int, percent or None)."""
  name: str
  start: str
  stop: str


def unknown_split_message(source: str, split: str, known: Iterable[str]) -> str:
  """That `source` (e.g. 'IDX datasets') has no split `split`, naming the split meant where
  `split` is a typo of one of `known` (`--split=tset`)."""
  known = sorted(known)
  meant = difflib.get_close_matches(split, known, n=1, cutoff=0.6)
  return (f'{source} have splits {known}, not {split!r}'
          + (f'; did you mean {meant[0]!r}?' if meant else '.'))


def parse_split(spec: str) -> list[SplitPart]:
  """Parses `spec`; raises ValueError naming the part that is not valid syntax."""
  parts = []
  for raw in spec.replace(' ', '').split('+'):
    match = _PART.match(raw)
    if not match:
      raise SplitError(f'Invalid split {spec!r}: cannot parse {raw!r}. '
                       "Use TFDS syntax such as 'train', 'train[:80%]', 'train[1000:]'.")
    for bound in (match['start'], match['stop']):
      if bound and not _BOUND.match(bound):
        raise SplitError(f'Invalid split {spec!r}: bad boundary {bound!r} in {raw!r}.')
      if bound and bound.endswith('%') and abs(int(bound[:-1])) > 100:
        raise SplitError(f'Invalid split {spec!r}: {bound} in {raw!r} is beyond 100%.')
    parts.append(SplitPart(match['name'], match['start'] or '', match['stop'] or ''))
  return parts


def _absolute(bound: str, num_examples: int) -> int | None:
  if not bound:
    return None
  match = _BOUND.match(bound)
  value = int(match['value'])
  if match['pct']:
    # TFDS' default rounding='closest' (Python's round, like TFDS).
    return int(round(value * num_examples / 100.0))
  return value


def shared_examples(spec: str, other: str, split_size: Callable[[str], int | None]) -> int:
  """How many examples split strings `spec` and `other` both select (`split_size`: the
  number of examples of a whole split, by name; None where it is not known, and the split's
  examples not counted)."""
  shared = 0
  for part in parse_split(spec):
    for another in parse_split(other):
      size = split_size(part.name) if part.name == another.name else None
      if size is not None:
        mine, theirs = slice_indices(part, size), slice_indices(another, size)
        shared += len(range(max(mine.start, theirs.start), min(mine.stop, theirs.stop)))
  return shared


def slice_indices(part: SplitPart, num_examples: int) -> range:
  """Indices of the examples `part` selects from a split of `num_examples`."""
  start = _absolute(part.start, num_examples)
  stop = _absolute(part.stop, num_examples)
  if any(b is not None and abs(b) > num_examples for b in (start, stop)):
    # As TFDS does: an absolute slice past the end is a mistake, not a clamp.
    raise SplitError(f'Split {part.name}[{part.start}:{part.stop}] asks for examples beyond '
                     f'the {num_examples} that split {part.name!r} has.')
  return range(*slice(start, stop).indices(num_examples))
