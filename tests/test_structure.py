"""The package's layout rules (DESIGN.md section 4): no module over 400 lines, no import cycle
(function-level imports counted), flwr imported only by server/ and client/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedlrs"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every fedlrs module that ``path`` imports, at any depth of its code (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_modules(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(modules()))
def test_flwr_only_in_the_flower_adapters(name):
    if name.startswith(("fedlrs.server", "fedlrs.client")):
        return
    tree = ast.parse(modules()[name].read_text())
    flower = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "flwr" for a in node.names)
              or isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr"]
    assert flower == [], f"{name} imports flwr at lines {flower}"


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``{package: packages it imports}`` one level below ``fedlrs`` (``fedlrs.server.app`` -> ``server``)."""
    def package(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    found: dict[str, set[str]] = {}
    for module, targets in graph.items():
        found.setdefault(package(module), set()).update(package(t) for t in targets if package(t) != package(module))
    return found


#: package -> the fedlrs packages it must never import (DESIGN.md section 4: lower never imports higher;
#: client and server are two adapters that share the protocol, never each other)
FORBIDDEN = {
    "core": {"data", "privacy", "protocol", "tasks", "nn", "simulations", "experiments", "server", "client", "federation_config"},
    "data": {"privacy", "protocol", "tasks", "nn", "simulations", "recsys", "personalized", "experiments", "server", "client", "federation_config"},
    "privacy": {"protocol", "tasks", "nn", "simulations", "experiments", "server", "client", "federation_config"},
    "protocol": {"server", "client", "simulations", "tasks", "experiments"},
    "tasks": {"server", "client", "simulations", "recsys", "experiments"},
    "nn": {"protocol", "tasks", "simulations", "experiments", "server", "client"},
    "simulations": {"experiments", "estimators", "server", "client"},
    "recsys": {"protocol", "simulations", "experiments", "server", "client"},
    "personalized": {"protocol", "simulations", "experiments", "server", "client"},
    "federation_config": {"protocol", "server", "client"},
    "server": {"client", "experiments"},
    "client": {"server", "experiments"},
    "experiments": {"server", "client"},
}


def test_packages_import_only_downwards():
    packages = package_graph(import_graph())
    broken = {name: sorted(packages.get(name, set()) & forbidden) for name, forbidden in FORBIDDEN.items()}
    assert {k: v for k, v in broken.items() if v} == {}


def test_packages_form_no_cycle():
    """Layers, not just modules: no package (one level below fedlrs) reaches itself through the others' imports."""
    packages = package_graph(import_graph())

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in packages.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    assert sorted(name for name in packages if name in reached(name)) == []


def test_package_graph_names_the_packages():
    graph = {"fedlrs.server.app": {"fedlrs.client.state", "fedlrs.server.billboard"}, "fedlrs.server.billboard": set(),
             "fedlrs.client.state": set()}
    assert package_graph(graph) == {"server": {"client"}, "client": set()}
