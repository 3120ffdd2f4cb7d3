"""End to end against a real ``prefect server start`` (SQLite) and ``histo serve``, both
started here on 127.0.0.1 and stopped at the end.

Covers: the deployments exist with their schedules; a manual run with parameters
completes; a batch added to the watched folder leads, through the watcher, the
``histo.data.arrived`` event and the deployment trigger, to a completed retrain run;
the run's artifacts are readable through the Prefect API.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from histo_core.config import GateConfig, RetrainConfig, StoreConfig, TrainConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from s3_servers import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: servers and flow-run subprocesses
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    log = open(home / "server.log", "w")
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 90, f"the Prefect server on port {port} (log: {home / 'server.log'})")
        yield {"api": api, "home": home, "env": {**env, "PREFECT_API_URL": api}}
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def served(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "watched" / "batches").mkdir(parents=True)
    env = {**prefect_server["env"], "PYTHONPATH": str(REPO)}
    log = open(root / "serve.log", "w")
    histo = Path(sys.executable).with_name("histo")
    proc = subprocess.Popen(
        [str(histo), "serve", "--data", str(root / "watched"), "--store", str(root / "store"),
         "--workdir", str(root / "work"), "--watch-every", "5", "--epochs", "1",
         "--cron", "30 1 * * *", "--timezone", "Europe/Amsterdam"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        # This process's client talks to the same server (settings, not the environment:
        # earlier tests may already have loaded Prefect's settings).
        with temporary_settings(updates={PREFECT_API_URL: prefect_server["api"]}):
            yield {"root": root, "log": root / "serve.log", "proc": proc}
    finally:
        _stop(proc)


def _client_call(fn):
    from prefect.client.orchestration import get_client

    async def run():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(run())


def _deployments() -> dict[str, object]:
    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    return _client_call(read)


def _flow_runs(deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read(client):
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    return _client_call(read)


def test_deployments_exist_with_their_schedules(served):
    names = {"retrain-nightly", "retrain-on-new-data", "watch-new-data", "predict", "rollback"}
    found = _wait(lambda: (d := _deployments()) and names <= set(d) and d, 120,
                  f"the served deployments (log: {served['log']})")
    nightly = found["retrain-nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("30 1 * * *", "Europe/Amsterdam")
    assert found["watch-new-data"].schedules[0].schedule.interval.total_seconds() == 5
    for name in ("retrain-nightly", "retrain-on-new-data"):
        assert found[name].global_concurrency_limit.limit == 1, name
    assert not found["predict"].schedules and not found["rollback"].schedules


def test_a_manual_run_with_parameters_completes(served, tmp_path):
    from prefect.deployments import run_deployment

    data = tmp_path / "manual"
    write_kaggle_layout(data, SyntheticSpec(count=300, seed=21))
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(served["root"] / "store")),
                           workdir=str(served["root"] / "work"), train=TrainConfig(epochs=1),
                           gate=GateConfig(auc_floor=0.0))
    _wait(lambda: "retrain-nightly" in _deployments(), 120, "the retrain-nightly deployment")
    run = run_deployment("retrain/retrain-nightly", parameters={"config": config.model_dump(mode="json")},
                         timeout=300)
    assert run.state.is_completed(), f"{run.state} (log: {served['log']})"


def test_a_new_batch_is_noticed_announced_and_retrained_on(served):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    deployment = _wait(lambda: _deployments().get("retrain-on-new-data"), 120, "retrain-on-new-data")
    before = len(_flow_runs(deployment.id))
    write_kaggle_layout(served["root"] / "watched" / "batches" / "b1", SyntheticSpec(count=300, seed=22))

    def completed_run():
        runs = [r for r in _flow_runs(deployment.id)[: 10] if r.state and r.state.is_final()]
        return runs[0] if len(_flow_runs(deployment.id)) > before and runs else None

    run = _wait(completed_run, 400, f"a retrain run triggered by the new batch (log: {served['log']})", 3)
    assert run.state.is_completed(), run.state
    assert run.parameters["config"]["data"] == str(served["root"] / "watched")

    async def artifacts(client):
        return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))

    found = {a.key: a for a in _client_call(artifacts)}
    assert {"retrain-summary", "retrain-epochs", "retrain-model-card", "retrain-data-docs"} <= set(found)
    # The manual run above made a champion in the same store, so the gate may go either way.
    summary = found["retrain-summary"].data
    assert re.search(r"## Retrain: \*\*(promoted|rejected)\*\*", summary), summary
    assert "champion before: v" in summary and "hold-out AUC: challenger" in summary
