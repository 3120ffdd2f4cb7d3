"""One retrain at a time per data root and per GPU on a machine, whoever started it.

Why not Prefect's deployment concurrency limit: it is per deployment (the nightly and the
event-triggered retrain ran side by side on one root and one GPU), and its lease lives in
the server's memory (Prefect 3.9 default): a server restart, or renewals missed on a loaded
machine, and the runner terminates the run it was protecting ("Concurrency lease renewal
failed ... Terminating execution"), a night's training lost.

This guard is an OS file lock (``fcntl.flock``) on one small file per key in a machine-wide
folder. It needs no server, so a restart cannot take it away; the kernel releases it when
the holding process dies, even by SIGKILL, so a dead worker never leaves a slot held. A
waiting run logs who holds the lock (flow run, pid, host, since) while it waits.

Across several worker machines on one data root, a work-pool concurrency limit (counted by
the server from run states, with no lease to renew) is the complement; README: "Operating
it for a season".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from histo_core.errors import RunGuardError

WaitReport = Callable[[str, dict[str, Any], float], None]  # key, holder (may be {}), seconds waited


def lock_keys(data: str, device: str | None) -> list[str]:
    """What one retrain occupies: its data root and, on a GPU, that GPU."""
    keys = [f"data-root {canonical_root(data)}"]
    if device and device.startswith("cuda"):
        keys.append(f"device {device if ':' in device else 'cuda:0'}")
    return keys


def canonical_root(data: str) -> str:
    """One spelling per data root: ``s3://b/p/`` and ``s3://b/p`` are one root, and so are
    ``./d`` and the absolute path of ``d``."""
    if "://" in data:
        return data.rstrip("/")
    return str(Path(data).expanduser().resolve())


def _lock_file(lock_dir: Path, key: str) -> Path:
    readable = re.sub(r"[^A-Za-z0-9]+", "-", key)[-60:].strip("-")
    return lock_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{readable}.lock"


@contextlib.contextmanager
def hold(keys: list[str], lock_dir: Path, holder: dict[str, Any], on_wait: WaitReport | None = None,
         poll_s: float = 2.0, report_every_s: float = 60.0) -> Iterator[None]:
    """Hold every key's lock for the ``with`` body, waiting (without limit) for each in
    sorted order, so two runs wanting the same keys can never deadlock. ``holder`` is
    written into the lock file for the runs that wait."""
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunGuardError(f"run guard: cannot create the lock folder {lock_dir}: {exc.strerror}") from None
    with contextlib.ExitStack() as held:
        for key in sorted(set(keys)):
            held.enter_context(_hold_one(key, _lock_file(lock_dir, key), holder, on_wait, poll_s, report_every_s))
        yield


@contextlib.contextmanager
def _hold_one(key: str, path: Path, holder: dict[str, Any], on_wait: WaitReport | None, poll_s: float,
              report_every_s: float) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunGuardError(f"run guard: cannot open the lock file {path}: {exc.strerror}") from None
    try:
        _acquire(fd, key, path, on_wait, poll_s, report_every_s)
        record = {"key": key, **holder, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (removing a locked file races other waiters)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, key: str, path: Path, on_wait: WaitReport | None, poll_s: float,
             report_every_s: float) -> None:
    started = time.monotonic()
    reported = -report_every_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - started
            if on_wait is not None and waited - reported >= report_every_s:
                on_wait(key, current_holder(path), waited)
                reported = waited
            time.sleep(poll_s)


def current_holder(path: Path) -> dict[str, Any]:
    """What the holder wrote into the lock file; {} while it is being written or unreadable."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
