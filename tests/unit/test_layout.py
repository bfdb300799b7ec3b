"""The house by concern: each subpackage of ``agent`` imports only what its ``__init__`` allows.

The rule lives in each ``__init__``'s "May import:" sentence; this test holds the code to it, so
the import graph between subpackages stays free of circles and of arrows that run back up.
``TYPE_CHECKING`` and function-level imports count too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
PACKAGES = sorted(p.name for p in AGENT.iterdir() if (p / "__init__.py").is_file())


def allowed(package: str) -> set[str]:
    """The ``agent.*`` names the package's docstring allows after "May import:"."""
    doc = ast.get_docstring(ast.parse((AGENT / package / "__init__.py").read_text())) or ""
    sentence = doc.split("May import:", 1)[1] if "May import:" in doc else ""
    names = set(re.findall(r"``(agent(?:\.\w+)?)``", sentence))
    return names | {f"agent.{package}"}


def imported(package: str) -> dict[str, set[str]]:
    """Each ``agent.<top>`` the package's modules import, with the modules that do."""
    found: dict[str, set[str]] = {}
    for path in sorted((AGENT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module == "agent" or module.startswith("agent."):
                    top = ".".join(module.split(".")[:2])
                    found.setdefault(top, set()).add(path.relative_to(AGENT.parent).as_posix())
    return found


def test_every_subpackage_declares_what_it_may_import() -> None:
    assert PACKAGES, "no subpackages found"
    undeclared = [
        p
        for p in PACKAGES
        if "May import:" not in (ast.get_docstring(ast.parse((AGENT / p / "__init__.py").read_text())) or "")
    ]
    assert not undeclared, f"these __init__ docstrings do not say what they may import: {undeclared}"


@pytest.mark.parametrize("package", PACKAGES)
def test_a_subpackage_imports_only_what_it_declares(package: str) -> None:
    foreign = {top: mods for top, mods in imported(package).items() if top not in allowed(package)}
    assert not foreign, f"agent.{package} imports what its __init__ does not allow: {foreign}"


def test_the_declared_graph_has_no_circle() -> None:
    graph = {f"agent.{p}": allowed(p) - {f"agent.{p}"} for p in PACKAGES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = [p for p in graph if reaches(p, p, set())]
    assert not circles, f"subpackages that reach themselves through what they may import: {circles}"


def test_only_the_catalogue_lives_beside_the_subpackages() -> None:
    loose = sorted(p.name for p in AGENT.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "errors.py", "problems.py"], loose
