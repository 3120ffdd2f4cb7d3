"""End to end against a real ``prefect server start`` (SQLite) and ``histo serve``, both
started here on 127.0.0.1 and stopped at the end.

Covers: the deployments exist with their schedules; a manual run with parameters
completes; a batch added to the watched folder leads, through the watcher, the
``histo.data.arrived`` event and the deployment trigger, to a completed retrain run;
the run's artifacts are readable through the Prefect API.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from histo_core.config import GateConfig, RetrainConfig, StoreConfig, TrainConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from prefect_server import client_call as _client_call
from prefect_server import deployments as _deployments
from prefect_server import flow_runs as _flow_runs
from prefect_server import prefect_server as start_prefect_server
from prefect_server import stop_group as _stop
from prefect_server import wait_for as _wait

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    with start_prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


@pytest.fixture(scope="module")
def served(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "watched" / "batches").mkdir(parents=True)
    env = prefect_server["env"]
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


def test_deployments_exist_with_their_schedules(served):
    names = {"retrain-nightly", "retrain-on-new-data", "watch-new-data", "predict", "rollback"}
    found = _wait(lambda: (d := _deployments()) and names <= set(d) and d, 120,
                  f"the served deployments (log: {served['log']})")
    nightly = found["retrain-nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("30 1 * * *", "Europe/Amsterdam")
    assert found["watch-new-data"].schedules[0].schedule.interval.total_seconds() == 5
    # Retrains are serialized by the run guard, not a server lease (issue 25); the watcher
    # keeps one slot and cancels a late worker's backlog.
    for name in ("retrain-nightly", "retrain-on-new-data"):
        assert found[name].global_concurrency_limit is None, name
    watcher = found["watch-new-data"]
    assert watcher.global_concurrency_limit.limit == 1
    assert watcher.concurrency_options.collision_strategy.value == "CANCEL_NEW"
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
