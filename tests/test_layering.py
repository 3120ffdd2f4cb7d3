"""The library must stay usable without Prefect: no module in histo_core imports it."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "histo_core"


@pytest.mark.parametrize("module", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_histo_core_never_imports_prefect(module):
    tree = ast.parse(module.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in {"prefect", "tasks", "flows", "deployments"}}
