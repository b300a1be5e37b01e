"""The memory a process may use, where a container caps it below the machine's."""
import os

import pytest

from cnnjax import host_memory
from cnnjax import sharding
from cnnjax.data import datasets

GiB = 2**30
MACHINE = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def fake_cgroups(monkeypatch, tmp_path, membership: str, files: dict[str, str]) -> None:
  """A `/proc/self/cgroup` of `membership` and a cgroup file system of `files`."""
  (tmp_path / 'cgroup').write_text(membership)
  for path, text in files.items():
    os.makedirs(tmp_path / 'fs' / os.path.dirname(path), exist_ok=True)
    (tmp_path / 'fs' / path).write_text(text + '\n')
  monkeypatch.setattr(host_memory, 'PROC_SELF_CGROUP', str(tmp_path / 'cgroup'))
  monkeypatch.setattr(host_memory, 'CGROUP_ROOT', str(tmp_path / 'fs'))


@pytest.mark.parametrize('membership, files', [
    # cgroup v2 in a container's namespace (Docker's --memory=2g today): the root is its group.
    ('0::/\n', {'memory.max': str(2 * GiB), 'memory.current': str(GiB // 2)}),
    # v1, the path naming the host's group, the container's files at the mount's root.
    ('12:memory:/docker/0123abcd\n4:cpu,cpuacct:/docker/0123abcd\n',
     {'memory/memory.limit_in_bytes': str(2 * GiB),
      'memory/memory.usage_in_bytes': str(GiB // 2)}),
    # v2 on the host: a job's group without a cap of its own, in a slice capped above it.
    ('0::/slurm/job_7/step_0\n', {'slurm/job_7/step_0/memory.max': 'max',
                                  'slurm/job_7/step_0/memory.current': str(GiB // 4),
                                  'slurm/job_7/memory.max': str(2 * GiB),
                                  'slurm/job_7/memory.current': str(GiB // 2)}),
])
def test_a_containers_cap_is_the_memory_a_process_may_use(membership, files, monkeypatch,
                                                          tmp_path):
  if MACHINE <= 2 * GiB:
    pytest.skip('a machine with no more memory than the cap')
  fake_cgroups(monkeypatch, tmp_path, membership, files)
  assert host_memory.total_bytes() == 2 * GiB
  assert host_memory.whose() == "this container's"
  assert host_memory.available_bytes() == 3 * GiB // 2
  assert sharding.free_memory_bytes() == 3 * GiB // 2  # What the CPU's model check counts.
  options = datasets.DataOptions('cifar10', 'train', '', 'test', data_in_memory='auto')
  assert datasets._fits_in_memory(options, 10_000, (100, 100, 3))  # 0.3 GB: held.
  assert not datasets._fits_in_memory(options, 50_000, (100, 100, 3))  # 1.5 GB: streamed.


@pytest.mark.parametrize('membership, files', [
    ('0::/\n', {'memory.max': 'max', 'memory.current': str(GiB)}),  # v2 without a cap.
    ('9:memory:/\n', {'memory/memory.limit_in_bytes': '9223372036854771712'}),  # v1's 'none'.
    ('0::/\n', {}),  # No memory controller mounted.
    ('', {}),
])
def test_without_a_cap_the_machines_memory_counts(membership, files, monkeypatch, tmp_path):
  fake_cgroups(monkeypatch, tmp_path, membership, files)
  assert host_memory.total_bytes() == MACHINE
  assert host_memory.whose() == "this machine's"
  available = host_memory.available_bytes()
  assert available is not None and 0 < available <= MACHINE


def test_an_unreadable_cgroup_file_is_no_cap(monkeypatch, tmp_path):
  monkeypatch.setattr(host_memory, 'PROC_SELF_CGROUP', str(tmp_path / 'missing'))
  assert host_memory.total_bytes() == MACHINE
