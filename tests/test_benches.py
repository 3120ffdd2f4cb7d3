"""Benches cannot rot unseen: each runs its ``--smoke`` mode (seconds, tiny generated
data) here, and each is listed in docs/benchmarks.md's table, where its figures live."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE_GROUPS, smoke_group
from prefect_server import copy_migrated_db

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.name for p in (REPO / "bench").glob("*.py"))
# What each smoke run must print: the lines its figures come from.
EXPECTED = {
    "augmentation.py": ("smoke: test AUC", "smoke operating points with TTA: test: sensitivity",
                        "held-out images of 90% tumour: AUC"),
    "faults.py": "configurations with a failure, 0 uncaught thread exceptions",
    "hostile_inputs.py": "clean-20k",
    "label_audit.py": "clean batches held:",
    "flow_overhead.py": "overhead of the flow",
    "learnability.py": "test AUC",
    "quality.py": "test AUC with TTA",
    "scale.py": "per-image time ratio",
    "season.py": "bad batches isolated of",
    "stain_groups.py": "median blue OD direction",
    "stain_normalise.py": ("held-out mapped: AUC", "mapped from the 90% tumour estimate", "then BatchNorm adapted to it"),
    "stain_shift.py": "re-stained as 8 labs",
    "throughput.py": "training, library trainer",
    "validate.py": "ratio to PIL decode",
}


def test_every_bench_has_a_smoke_check():
    assert set(BENCHES) == set(EXPECTED)
    assert set(SMOKE_GROUPS) <= set(BENCHES), "conftest.SMOKE_GROUPS names a bench that is gone"


def _run_smokes(out: Path, benches: list[str], runs_flows: bool) -> Path:
    """The interpreter's output goes to ``runner.log``, not to pipes: a process it leaves
    behind (Prefect's temporary server, once its start timed out) would hold a pipe open
    and so the suite; whatever is left of its process group is killed afterwards."""
    # Prefect's temporary API server for the flow benches: in the run's folder, from the
    # migrated template (not the user's ~/.prefect), with time to start on a busy machine.
    # The other group starts no server: it does not wait for the template.
    if runs_flows:
        copy_migrated_db(out / "prefect-home" / "prefect.db")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_HOME": str(out / "prefect-home"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    with open(out / "runner.log", "w") as log:
        runner = subprocess.Popen([sys.executable, str(REPO / "tests" / "bench_smokes.py"), str(out), *benches],
                                  cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            runner.wait(timeout=1800)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    return out


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """``folder(group)``: the smokes of one group (conftest.SMOKE_GROUPS), run one after the
    other in one interpreter (tests/bench_smokes.py: torch, Prefect and GX imported once
    per group, not once per bench) when the group's first test asks for them."""
    folders: dict[str, Path] = {}

    def folder(group: str) -> Path:
        if group not in folders:
            folders[group] = _run_smokes(tmp_path_factory.mktemp(f"smokes-{group}"),
                                         [b for b in BENCHES if smoke_group(b) == group], group == "flows")
        return folders[group]

    return folder


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_smoke_mode_runs(bench, smoke_runs):
    folder = smoke_runs(smoke_group(bench))
    report = folder / f"{bench}.json"
    assert report.is_file(), f"{bench} --smoke did not finish:\n{(folder / 'runner.log').read_text()[-3000:]}"
    done = json.loads(report.read_text())
    assert done["exit"] == 0, f"{bench} --smoke failed:\n{done['stdout'][-2000:]}\n{done['stderr'][-3000:]}"
    expected = EXPECTED[bench]
    for line in expected if isinstance(expected, tuple) else (expected,):
        assert line in done["stdout"], done["stdout"][-2000:]
    assert "Exception in thread" not in done["stderr"], done["stderr"][-3000:]  # a thread's failure is a failure


def test_every_bench_is_in_the_benchmarks_table():
    page = REPO / "docs" / "benchmarks.md"
    assert "(docs/benchmarks.md)" in (REPO / "README.md").read_text(), "the README links the benchmarks page"
    table = [line for line in page.read_text().splitlines() if line.startswith("| `")]
    for bench in BENCHES:
        assert any(f"`{bench}" in line for line in table), f"{bench}: no row in docs/benchmarks.md's table"


def test_a_variant_kept_in_part_is_named_not_read(tmp_path, monkeypatch):
    """A run killed between writing its logits and its result leaves one without the
    other: comparing it must say which file is missing, not raise FileNotFoundError."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import augmentation
    (tmp_path / "cut-logits.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"no cut\.json in .*: train cut there"):
        augmentation.trained_variant(argparse.Namespace(out=tmp_path, hold_out_stain="pink"), "cut")
