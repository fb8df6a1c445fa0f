"""The layering and the public surface: checked, not promised."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

import fabric as fb

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_import_linter_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _layered_modules() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return {name.strip("() ") for layer in layers for name in re.split(r"[|:]", layer)}


def test_every_package_and_top_level_module_has_a_layer():
    children = {f"fabric.{p.stem}" for p in (REPO / "fabric").glob("*.py") if p.stem != "__init__"}
    children |= {f"fabric.{p.parent.name}" for p in (REPO / "fabric").glob("*/__init__.py")}
    missing = sorted(children - _layered_modules())
    assert not missing, (f"{missing} have no layer: add each to the layers contract in pyproject.toml, below "
                         "everything that imports it and above everything it imports (docs/architecture.md)")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in edges[node]:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
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
    return found


def test_no_module_import_cycle():
    # Imports inside functions count (they are cycles that merely load late); `if TYPE_CHECKING:` ones do not.
    graph = grimp.build_graph("fabric", "serve", "jobs", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e")]:
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_importing_fabric_starts_nothing_and_does_not_import_ray():
    code = "import sys, fabric; print('ray' in sys.modules, 'fabric.client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_public_surface_is_small_and_complete():
    assert 12 <= len(fb.__all__) <= 20
    for name in fb.__all__:
        assert getattr(fb, name) is not None
    assert callable(fb.connect) and fb.Submission.__name__ == "Submission"


def test_modules_stay_small_and_say_what_they_own():
    for path in (REPO / "fabric").rglob("*.py"):
        text = path.read_text()
        assert text.lstrip().startswith('"""'), f"{path} has no module docstring"
        assert text.count("\n") <= 420, f"{path} is {text.count(chr(10))} lines: split it"
