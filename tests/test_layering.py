"""Imports point one way: every harness module imports only what README's layer table allows it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "harness"
TABLE_START = "<!-- layers: begin -->"
TABLE_END = "<!-- layers: end -->"


def component(module: str) -> str:
    """The part of the harness a dotted module belongs to: `harness.engine.terms.region` -> `engine`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    """The dotted name of a file under harness/."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def harness_imports(path: Path) -> set[str]:
    """Every harness module a file imports, at its top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness"):
            names = [f"harness.{alias.name}" for alias in node.names] if node.module == "harness" else [node.module]
            imported.update(names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("harness"))
    return imported


def declared_layers() -> dict[str, set[str]]:
    """README's layer table: component -> the components it may import (besides itself)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    layers = {}
    for row in rows:
        _, names, allowed, *_ = (cell.strip() for cell in row.split("|"))
        for name in re.findall(r"`(\w+)`", names):
            layers[name] = set(re.findall(r"`(\w+)`", allowed))
    return layers


def actual_imports() -> dict[str, set[str]]:
    """component -> the other components its files import."""
    actual: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue  # the package's docstring, no module of its own
        name = component(module_name(path))
        actual.setdefault(name, set()).update(component(module) for module in harness_imports(path))
    return {name: imported - {name, "harness"} for name, imported in actual.items()}


def test_every_module_imports_only_what_the_readme_allows() -> None:
    declared, actual = declared_layers(), actual_imports()
    assert set(declared) == set(actual), "README's layer table and the tree name different modules"
    broken = {name: sorted(actual[name] - declared[name]) for name in actual if actual[name] - declared[name]}
    assert not broken, f"imports against the declared layers: {broken}"


def test_the_layering_test_sees_a_breach(tmp_path: Path) -> None:
    """A function-level import of the engine from the report would be caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def build():\n    from harness.engine.setup import set_up\n")
    assert harness_imports(probe) == {"harness.engine.setup"}
    assert component("harness.engine.setup") == "engine" and "engine" not in declared_layers()["report"]
