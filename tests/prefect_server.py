"""A real ``prefect server start`` (SQLite) on 127.0.0.1 for the end-to-end tests, and
small helpers to wait on it and read from its API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from s3_servers import free_port


# A migrated, empty Prefect database that the pytest run migrates once, in the background
# while its test processes start (conftest), and every test server starts from a copy of:
# migrating a new SQLite database is about 17 of a server start's 29 CPU-seconds.
TEMPLATE_DB = "HISTO_TEST_PREFECT_DB"


def start_migrating_template(folder: Path) -> subprocess.Popen:
    """``prefect server database upgrade`` into ``folder/building``, renamed to
    ``folder/ready`` when it succeeds (or ``folder/failed``): a reader never sees half a file."""
    env = {**os.environ, "PREFECT_HOME": str(folder / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder}/building/prefect.db"}
    (folder / "building").mkdir(parents=True)
    prefect = Path(sys.executable).with_name("prefect")
    script = f'"{prefect}" server database upgrade -y >upgrade.log 2>&1 && mv building ready || mv building failed'
    return subprocess.Popen(["sh", "-c", script], cwd=folder, env=env, start_new_session=True)


def copy_migrated_db(dest: Path, timeout: float = 180) -> bool:
    """Put the template database at ``dest`` (waiting for it to be ready); False, leaving
    ``dest`` alone, where there is none (a test run outside pytest, or the migration
    failed): the server then migrates a new database itself, as it always could."""
    import shutil

    folder = os.environ.get(TEMPLATE_DB)
    if not folder:
        return False
    ready = Path(folder) / "ready" / "prefect.db"
    deadline = time.monotonic() + timeout
    while not ready.is_file() and (Path(folder) / "building").is_dir() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not ready.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ready, dest)
    return True


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process started with ``start_new_session`` and everything it started: SIGTERM,
    then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def prefect_server(home: Path, **settings: str) -> Iterator[dict[str, Any]]:
    """Start a server with its own PREFECT_HOME and database; yields its API URL, the
    environment a client of it needs, and ``restart()``: stop it and start it again on the
    same port and database (an upgrade, a hiccup). ``settings`` are extra PREFECT_* variables."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # No UI: nothing here looks at it, and preparing its files is 1.5 of a start's 10 CPU-s.
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port), **settings}
    prefect = Path(sys.executable).with_name("prefect")
    api = f"http://127.0.0.1:{port}/api"
    procs: list[subprocess.Popen] = []

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
        except OSError:
            return False

    def start() -> None:
        log = open(home / "server.log", "a")
        procs.append(subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(healthy, 90, f"the Prefect server on port {port} (log: {home / 'server.log'})")

    def restart() -> None:
        stop_group(procs[-1])
        start()

    if not (home / "prefect.db").exists():
        copy_migrated_db(home / "prefect.db")
    try:
        start()
        yield {"api": api, "home": home, "env": {**env, "PREFECT_API_URL": api}, "restart": restart}
    finally:
        if procs:
            stop_group(procs[-1])


def drain_prefect_clients() -> None:
    """Send what this process's flows left queued (logs, events) while the server is up, as
    ``prefect_test_harness`` does: queued at exit, they were retried against a stopped
    server for over a minute ("Error logging to API") before the interpreter ended."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


def client_call(fn: Callable) -> Any:
    """Run ``await fn(client)`` with a Prefect client of the current settings."""
    from prefect.client.orchestration import get_client

    async def run():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(run())


def deployments() -> dict[str, Any]:
    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    return client_call(read)


def flow_runs(deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read(client):
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    return client_call(read)
