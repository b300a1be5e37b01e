"""The shape of the library: no import cycles, configs only at the entry points.

Every module under cnnjax/ is parsed (imports inside functions included) and
its imports of other cnnjax modules become edges of a graph. A cycle, or a
module below the entry points importing the `configs` package, fails here.
"""
import ast
import os

from tests.helpers import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, 'cnnjax')
# Files run as commands (`python -m ...`): only they read configs/.
ENTRY_POINTS = {'cnnjax.main', 'cnnjax.evaluate', 'cnnjax.predict', 'cnnjax.diagnose',
                'cnnjax.pretrained.__main__'}


def module_names() -> dict[str, str]:
  """'cnnjax.data.datasets' -> its file, for every module of the package."""
  names = {}
  for directory, _, files in os.walk(PACKAGE_DIR):
    for file in files:
      if file.endswith('.py'):
        parts = os.path.relpath(os.path.join(directory, file), REPO_ROOT)[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        names['.'.join(parts)] = os.path.join(directory, file)
  return names


def imported_modules(path: str, name: str, known: set[str]) -> set[str]:
  """The modules `name` imports anywhere in its file: cnnjax modules and top-level packages.

  `from package import module` is an edge to the module; `from module import name` to the
  module; a relative import is resolved against `name`'s package.
  """
  tree = ast.parse(open(path).read(), path)
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      for alias in node.names:
        candidate = f'{base}.{alias.name}'
        found.add(candidate if candidate in known else base)
  return found


def import_graph() -> dict[str, set[str]]:
  names = module_names()
  known = set(names)
  return {name: imported_modules(path, name, known) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of cnnjax modules, as a path that ends where it starts, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for target in sorted(graph[node]):
      if target not in graph:
        continue
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert 'cnnjax.train' in graph and 'cnnjax.training.loop' in graph['cnnjax.train']
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
  graph = {'a': {'b'}, 'b': {'c', 'numpy'}, 'c': {'a'}, 'd': set()}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_only_entry_points_import_configs():
  readers = {name for name, imports in import_graph().items()
             if any(m == 'configs' or m.startswith('configs.') for m in imports)}
  assert readers <= ENTRY_POINTS, sorted(readers - ENTRY_POINTS)
  assert 'cnnjax.main' in readers  # The check sees function-level imports.


def test_keras_reference_is_outside_the_library():
  assert 'cnnjax.keras_reference' not in import_graph()
  assert os.path.exists(os.path.join(REPO_ROOT, 'experiments', 'keras_reference.py'))
