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
    assert not {m for m in imported if m.split(".")[0] in {"prefect", "histo_tasks", "histo_flows", "histo_deployments"}}


REPO = CORE.parent
ORCHESTRATION = {"tasks": "histo_tasks", "flows": "histo_flows", "deployments": "histo_deployments"}


@pytest.mark.parametrize("module", sorted(p for d in ("histo_core", "histo_cli", "tasks", "flows", "deployments",
                                                       "tests", "bench") for p in (REPO / d).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_imports_use_the_installed_names(module):
    """``flows/``, ``tasks/``, ``deployments/`` install as ``histo_flows`` etc.; a bare
    ``import flows`` works only from a checkout and breaks the installed package."""
    tree = ast.parse(module.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    assert not {m for m in imported if m.split(".")[0] in ORCHESTRATION}
