"""Cogs do not reach into each other: no cog imports another (counting imports made only for type
checking), and none looks another up with `get_cog`. What several cogs share lives in `bot/` or in
`cogs/utils/`, which is not a cog; cross-cog signals are `bot.dispatch` events."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COGS = Path(__file__).resolve().parents[2] / "cogs"
COG_FILES = sorted(path for path in COGS.glob("*.py") if path.name != "__init__.py")


def imported_modules(tree: ast.AST) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("path", COG_FILES, ids=lambda path: path.stem)
def test_a_cog_imports_no_other_cog(path: Path) -> None:
    other_cogs = {f"cogs.{other.stem}" for other in COG_FILES if other != path}
    imported = imported_modules(ast.parse(path.read_text()))
    assert not imported & other_cogs, f"{path.name} imports {sorted(imported & other_cogs)}"


@pytest.mark.parametrize("path", COG_FILES, ids=lambda path: path.stem)
def test_a_cog_looks_up_no_cog(path: Path) -> None:
    calls = [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "get_cog"
    ]
    assert not calls, f"{path.name} calls get_cog on line(s) {calls}"


def test_the_shared_helpers_import_no_cog() -> None:
    cogs = {f"cogs.{path.stem}" for path in COG_FILES}
    for path in sorted((COGS / "utils").glob("*.py")):
        imported = imported_modules(ast.parse(path.read_text()))
        assert not imported & cogs, f"cogs/utils/{path.name} imports {sorted(imported & cogs)}"
