"""How much memory this process may use: the machine's, or less where its container says so.

A container (Docker's `--memory`, a Kubernetes pod, a SLURM job's cgroup) caps memory below
what the machine has, and the kernel kills a process that passes the cap without a word.
The machine's own figures (`sysconf`, `/proc/meminfo`) do not show the cap, so a dataset
judged to fit in half the machine's memory would be loaded past it. This reads the caps of
the process's control group and the groups above it (cgroup v2 `memory.max`, v1
`memory.limit_in_bytes`), with the memory each already uses, and takes the lowest figure.
"""
import os

# Where the kernel describes the process's control groups; tests point these elsewhere.
PROC_SELF_CGROUP = '/proc/self/cgroup'
CGROUP_ROOT = '/sys/fs/cgroup'
_NO_CAP = 2**60  # cgroup v1 writes 'no cap' as a number near 2**63, beyond any machine.


def _memory_groups() -> list[tuple[str, str, str]]:
  """(folder, cap file, usage file) of the process's memory cgroup and each group above it,
  in the v2 and the v1 layout. A container's own view of its group is the hierarchy's root,
  which is also where its group's files lie when its path names the host's group."""
  try:
    with open(PROC_SELF_CGROUP) as f:
      lines = f.read().splitlines()
  except OSError:
    return []
  groups = []
  for line in lines:
    hierarchy, controllers, path = (line.split(':', 2) + ['', ''])[:3]
    if hierarchy == '0' and not controllers:
      mount, cap, usage = CGROUP_ROOT, 'memory.max', 'memory.current'
    elif 'memory' in controllers.split(','):
      mount = os.path.join(CGROUP_ROOT, 'memory')
      cap, usage = 'memory.limit_in_bytes', 'memory.usage_in_bytes'
    else:
      continue
    parts = [part for part in path.strip().split('/') if part]
    groups += [(os.path.join(mount, *parts[:depth]), cap, usage)
               for depth in range(len(parts), -1, -1)]
  return groups


def _number(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None  # v2 writes no cap as 'max'.


def _caps() -> list[tuple[int, int]]:
  """(cap, memory in use) of each group of the process that has a cap."""
  found = []
  for folder, cap_file, usage_file in _memory_groups():
    cap = _number(os.path.join(folder, cap_file))
    if cap is not None and cap < _NO_CAP:
      found.append((cap, _number(os.path.join(folder, usage_file)) or 0))
  return found


def _machine_bytes() -> int:
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def total_bytes() -> int:
  """The memory this process may fill: the machine's, or its container's cap if lower."""
  return min([_machine_bytes()] + [cap for cap, _ in _caps()])


def whose() -> str:
  """Whose memory `total_bytes` is, for messages: "this machine's" or "this container's"."""
  return "this container's" if total_bytes() < _machine_bytes() else "this machine's"


def available_bytes() -> int | None:
  """The memory free to this process now: Linux' MemAvailable, or what its container's cap
  leaves if less; None where neither is known."""
  free = []
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f if ':' in line)
    free.append(int(fields['MemAvailable'].split()[0]) * 1024)
  except (OSError, KeyError, ValueError):
    pass
  free += [max(0, cap - used) for cap, used in _caps()]
  return min(free) if free else None
