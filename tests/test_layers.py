"""The package's layers (docs/architecture.md): imports point one way, and never in a circle.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import
cannot hide a circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raml_cli"
HELPERS = {"errors", "devices", "distributed", "seeding", "progress", "atomic"}
# Engine packages, each importing only those listed after it (and the helpers).
ENGINE_ORDER = ["demo", "tradeoff", "tune", "index", "train", "embed", "evaluate", "export",
                "store", "model", "data"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base
                                                                              else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "top"
    if parts[1] == "cli":
        return "cli"
    return "helper" if parts[1] in HELPERS else "engine"


def test_no_module_imports_itself_through_others() -> None:
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                cycles.append(" -> ".join(stack[stack.index(other):] + [other]))
            elif other not in state:
                visit(other, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(_modules()):
        if module not in state:
            visit(module, [])
    assert cycles == []


@pytest.mark.parametrize("lower, higher", [("helper", "engine"), ("helper", "cli"),
                                           ("engine", "cli")])
def test_imports_point_down(lower: str, higher: str) -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                    if _layer(a) == lower and _layer(b) == higher)
    assert upward == []


def test_engine_packages_import_only_the_ones_below_them() -> None:
    rank = {name: i for i, name in enumerate(ENGINE_ORDER)}
    wrong = []
    for a, targets in _graph().items():
        for b in targets:
            pa, pb = a.split(".")[1:2], b.split(".")[1:2]
            if pa and pb and pa[0] in rank and pb[0] in rank and pa != pb \
                    and rank[pb[0]] < rank[pa[0]]:
                wrong.append(f"{a} -> {b}")
    assert sorted(wrong) == []


def test_only_the_command_line_knows_typer() -> None:
    users = sorted(name for name, path in _modules().items()
                   if "typer" in {t.split(".")[0] for t in _imported_names(path)}
                   and _layer(name) != "cli")
    assert users == []


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names
