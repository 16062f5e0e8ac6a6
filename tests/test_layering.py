"""Imports only point down: drivers ← buffer ← agent ← hil.

Walks every import statement (top level and inside functions, TYPE_CHECKING blocks included)
of the lower packages and fails on one that reaches up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the first-party packages it must never import
FORBIDDEN = {
    "drivers": {"agent", "buffer", "hil"},
    "buffer": {"agent", "hil"},
    "agent": {"hil"},
}
# The demo command starts the HIL rig: the one place the agent may reach into hil/.
ALLOWED = {("agent/commands/demo.py", "hil")}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, top in imported_packages(path):
            if top in FORBIDDEN[package] and (rel, top) not in ALLOWED:
                bad.append(f"{rel}:{line} imports {top}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_a_higher_one(package: str) -> None:
    assert upward_imports(package) == []


def test_the_walk_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agent.config import Config\n"
        "def f():\n    import hil.scenario\n"
    )
    assert {top for _, top in imported_packages(f)} >= {"agent", "hil"}
