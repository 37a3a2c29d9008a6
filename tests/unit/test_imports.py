"""The package's modules import each other without cycles, so each can be read, tested and
changed from the bottom up. Function-level imports count too (they only hide a cycle);
imports under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("visiontrain", "data_prep", "launch")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (the most specific existing module of each import)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    gc.disable()  # CPython 3.11: a finalizer run by the collector inside ast.parse can make it fail spuriously
    try:
        tree = ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()
    visit(tree)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_walker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_walker_sees_function_level_imports_and_skips_type_checking_ones(tmp_path):
    modules = {"visiontrain": ROOT / "visiontrain/__init__.py",
               "visiontrain.config": ROOT / "visiontrain/config/__init__.py",
               "visiontrain.models": ROOT / "visiontrain/models/__init__.py", "visiontrain.x": tmp_path / "x.py"}
    source = tmp_path / "x.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from visiontrain import models\n"
                      "def f():\n    from visiontrain.config import Config\n")
    assert imported_modules(source, "visiontrain.x", modules) == {"visiontrain.config"}


def test_project_modules_import_each_other_without_cycles():
    modules = project_modules()
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    assert "visiontrain.config" in graph["visiontrain.train.trainer"]  # the walker does see our imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
