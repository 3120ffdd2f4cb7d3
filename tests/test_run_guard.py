"""The run guard (histo_core.run_guard): one retrain per data root and per GPU on a
machine, held by a real OS lock in real processes; a holder killed by SIGKILL frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from histo_core import run_guard
from histo_core.errors import RunGuardError

HOLDER = """
import sys, time
from pathlib import Path
from histo_core import run_guard
with run_guard.hold(run_guard.lock_keys(sys.argv[2], None), Path(sys.argv[1]), {"flow_run": "first-run"}):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _start_holder(lock_dir: Path, data: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), data, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_root_waits_and_is_told_who_holds_it(tmp_path):
    data = str(tmp_path / "root")
    holder = _start_holder(tmp_path / "locks", data, 3)
    waits = []
    started = time.monotonic()
    with run_guard.hold(run_guard.lock_keys(data + "/", None), tmp_path / "locks", {"flow_run": "second"},
                        on_wait=lambda key, who, s: waits.append((key, who)), poll_s=0.1, report_every_s=1):
        waited = time.monotonic() - started
    assert waited > 2.5  # the first run held it for 3 s after saying so
    assert holder.wait(10) == 0
    key, who = waits[0]
    assert key == f"data-root {Path(data).resolve()}"
    assert who["flow_run"] == "first-run" and who["pid"] == holder.pid and who["host"]


def test_a_holder_killed_by_sigkill_frees_the_root_at_once(tmp_path):
    data = str(tmp_path / "root")
    holder = _start_holder(tmp_path / "locks", data, 300)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    started = time.monotonic()
    with run_guard.hold(run_guard.lock_keys(data, None), tmp_path / "locks", {}, poll_s=0.1):
        pass
    assert time.monotonic() - started < 2


def test_other_roots_do_not_wait_and_a_gpu_is_its_own_key(tmp_path):
    holder = _start_holder(tmp_path / "locks", str(tmp_path / "a"), 300)
    try:
        started = time.monotonic()
        with run_guard.hold(run_guard.lock_keys(str(tmp_path / "b"), "cpu"), tmp_path / "locks", {}, poll_s=0.1):
            assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()
    assert run_guard.lock_keys("s3://bucket/pcam/", "cuda") == ["data-root s3://bucket/pcam", "device cuda:0"]
    assert run_guard.lock_keys("s3://bucket/pcam", "cuda:1")[1] == "device cuda:1"
    assert run_guard.lock_keys("s3://bucket/pcam", "cpu") == ["data-root s3://bucket/pcam"]


def test_a_lock_folder_that_cannot_be_made_is_an_environment_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunGuardError, match="cannot create the lock folder"):
        with run_guard.hold(["data-root x"], blocker / "locks", {}):
            pass
