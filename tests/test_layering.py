"""The layering is a lint rule (ruff's TID251, configured in pyproject.toml and
histo_core/ruff.toml; ``make test`` runs ruff before pytest). These tests keep the rule
from vanishing unseen: ruff must refuse a violation at each place, and pass the tree."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


def _ruff(source: str, as_file: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUFF), "check", "--no-cache", "--stdin-filename", as_file, "-"], input=source,
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("source, as_file", [
    ("import prefect\n", "histo_core/new_module.py"),
    ("from prefect.states import Failed\n", "histo_core/data/new_reader.py"),
    ("from histo_tasks.retrain import validate_data\n", "histo_core/new_module.py"),
    ("from flows.retrain import retrain\n", "tests/test_new.py"),
    ("import tasks.retrain\n", "bench/new_bench.py"),
])
def test_ruff_refuses_an_import_across_the_layers(source, as_file):
    done = _ruff(source, as_file)
    assert done.returncode == 1 and "TID251" in done.stdout, done.stdout + done.stderr


def test_prefect_is_fine_outside_the_library():
    source = "import prefect\nfrom histo_flows.retrain import retrain\n\nprint(prefect, retrain)\n"
    done = _ruff(source, "flows/new_flow.py")
    assert done.returncode == 0, done.stdout


def test_the_tree_passes():
    done = subprocess.run([str(RUFF), "check", "--no-cache", "."], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
