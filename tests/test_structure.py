"""The house rules of the codebase, checked: no import cycles between project modules, no file
over 600 lines, a model family is one file in nets/models/, importing a layer does not import
the zoo."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import nets
from nets import registry

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ('nets', 'train', 'data', 'experiments')
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob('*.py')}


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Project modules an import statement loads (a submodule's own ancestor packages left out:
    importing a sibling through its package is the normal layout of a package)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
            anchor = module.split('.')
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = '.'.join([*anchor, base] if base else anchor)
        names = [base] + [f'{base}.{alias.name}' for alias in node.names]
    found = set()
    ancestors = {'.'.join(module.split('.')[:i]) for i in range(1, module.count('.') + 1)}
    for name in names:
        parts = name.split('.')
        for i in range(1, len(parts) + 1):
            prefix = '.'.join(parts[:i])
            if prefix in known and prefix not in ancestors and prefix != module:
                found.add(prefix)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import statement of every project module, at module level or inside functions."""
    modules = _project_modules()
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(node, module, path.name == '__init__.py', known)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert cycles(graph) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles_between_project_modules():
    graph = import_graph()
    assert 'train.loop' in graph and 'nets.kernels.conv' in graph['nets.layers.blocks']
    assert cycles(graph) == []


def test_no_project_file_over_600_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in _project_modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    long.update(
        {
            str(p.relative_to(REPO)): n
            for p in (REPO / 'tests').glob('*.py')
            if (n := len(p.read_text().splitlines())) > MAX_LINES
        }
    )
    assert long == {}


def test_every_family_file_registers_models_and_every_model_lives_in_one():
    families = {p.stem for p in (REPO / 'nets' / 'models').glob('*.py') if p.stem != '__init__'}
    registered = {nets.model_family(name) for name in nets.list_models()}
    assert registered == families
    for name in nets.list_models():
        module = nets.model_class(name).__module__
        assert module.startswith('nets.models.'), (name, module)


def test_a_new_family_is_one_file_in_the_models_folder(tmp_path, monkeypatch):
    (tmp_path / 'toy_family.py').write_text(
        'import flax.linen as nn\n'
        'from nets.registry import register\n\n\n'
        'class Toy(nn.Module):\n'
        '    num_classes: int = 10\n\n'
        '    @nn.compact\n'
        '    def __call__(self, x, *, train=False):\n'
        '        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))\n\n\n'
        "register('toy', Toy, family='toy_family', num_classes=3)\n"
    )
    import nets.models

    monkeypatch.setattr(nets.models, '__path__', [*nets.models.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, '_families_loaded', False)
    monkeypatch.setattr(registry, '_REGISTRY', {})
    monkeypatch.delitem(sys.modules, 'nets.models.toy_family', raising=False)
    for name in list(sys.modules):  # the families register again on the next lookup
        if name.startswith('nets.models.'):
            monkeypatch.delitem(sys.modules, name)
    assert 'toy' in nets.list_models() and nets.model_family('toy') == 'toy_family'
    assert nets.count_params(nets.create('toy'), (1, 4)) == 4 * 3 + 3
    assert 'resnet50' in nets.list_models()  # the others still there


@pytest.mark.parametrize('module', ['nets.layers.attention', 'nets.kernels.conv', 'nets.registry'])
def test_importing_a_layer_does_not_import_the_zoo(module):
    code = (
        f'import sys, {module}; '
        "print(sorted(m for m in sys.modules if m.startswith('nets.models.')))"
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert out == '[]'
