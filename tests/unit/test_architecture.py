"""The architecture as tests (docs/design.md draws it): the import contracts of
pyproject.toml hold, no module imports itself round a cycle, imports sit at the
top of their modules, and `shared/` keeps few modules outside its packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("shared", "api", "worker")
# An import inside a function is allowed only to load an optional dependency on
# first use, and says so ("optional") on its line or in the comment above it.
OPTIONAL_MARK = "optional"


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def _cycle_from(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module) & modules):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(modules):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = grimp.build_graph(*PRODUCTION, "devstack")
    # A package's __init__ importing its own modules is how a package is assembled,
    # not a cycle between modules.
    modules = {m for m in graph.modules if not (ROOT / m.replace(".", "/")).is_dir()}
    assert _cycle_from(graph, modules) is None


def _late_imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if not isinstance(inner, ast.Import | ast.ImportFrom):
                    continue
                said = " ".join(lines[max(0, inner.lineno - 3):inner.lineno]).lower()
                if OPTIONAL_MARK not in said:
                    yield f"{path.relative_to(ROOT)}:{inner.lineno}"


@pytest.mark.parametrize("package", [*PRODUCTION, "devstack"])
def test_imports_sit_at_the_top_of_their_modules(package: str) -> None:
    late = [hit for path in sorted((ROOT / package).rglob("*.py"))
            if "migrations" not in path.parts for hit in _late_imports(path)]
    assert late == []


def test_shared_keeps_its_code_in_domain_packages() -> None:
    loose = sorted(p.name for p in (ROOT / "shared").glob("*.py"))
    assert len(loose) <= 8, loose
