"""The package's shape (issue 16): layers in folders, imports in one direction, no import circle, short files.

Every check reads the source with `ast` (every import at any depth, inside functions too), so a
lazy import that closes a circle or crosses a layer is caught like a top-level one.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import redblue

ROOT = Path(redblue.__file__).parent
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py", "errors.py", "config.py"}
# ../shared/DESIGN.md's layers; a module may import its own layer and those below it.
CORE = ("data", "models", "attacks", "defenses", "metrics", "bounds", "config", "errors")
ENGINE = ("train", "evaluate", "certify", "sweep", "arena", "reproduce", "runs")
SURFACE = ("report", "cli")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The redblue modules `path` imports: `from a import b` names module a.b when b is one, else a."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
            names = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import redblue.x.y` of a name inside a module
                name = name.rpartition(".")[0]
            if name.startswith("redblue"):
                found.add(name)
    return found


def _import_graph() -> dict[str, set[str]]:
    """Who imports whom; importing a.b.c also runs the packages a and a.b that `module` is not inside."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = _imports(path, modules)
        for target in list(targets):
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts))}
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def _layer(module: str) -> str | None:
    top = module.split(".")[1] if "." in module else ""
    for name, members in (("core", CORE), ("engine", ENGINE), ("surface", SURFACE)):
        if top in members:
            return name
    return None


def test_the_top_of_the_package_holds_only_packages_and_the_shared_modules():
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.name not in TOP_LEVEL_MODULES)
    assert loose == []
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert sorted(set(CORE + ENGINE + SURFACE) - {"config", "errors"}) == packages  # each package has its layer


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module: each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle():
    assert _circles(_import_graph()) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    """The check above can fail: two modules that import each other (one lazily) are one circle."""
    modules = {"redblue.a": tmp_path / "a.py", "redblue.b": tmp_path / "b.py"}
    modules["redblue.a"].write_text("from redblue.b import f\n")
    modules["redblue.b"].write_text("def f():\n    from redblue.a import g\n")
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    assert graph == {"redblue.a": {"redblue.b"}, "redblue.b": {"redblue.a"}}
    assert _circles(graph) == [["redblue.a", "redblue.b"]]
    assert _circles({**graph, "redblue.b": set()}) == []


def test_imports_go_down_the_layers_only():
    """core <- engine <- surface: the engine never imports report/ or cli/, the core never the engine."""
    rank = {"core": 0, "engine": 1, "surface": 2}
    upward = []
    for module, targets in _import_graph().items():
        layer = _layer(module)
        for target in targets:
            if layer and _layer(target) and rank[_layer(target)] > rank[layer]:
                upward.append(f"{module} ({layer}) -> {target} ({_layer(target)})")
    assert sorted(upward) == []


def test_no_file_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_readmes_python_imports_work():
    """Every `from redblue... import ...` line in the README's code blocks imports (the public API)."""
    readme = (ROOT.parents[1] / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("from redblue")]
    assert len(lines) >= 4
    for line in lines:
        (node,) = ast.parse(line).body
        module = importlib.import_module(node.module)
        assert [alias.name for alias in node.names if not hasattr(module, alias.name)] == [], line
