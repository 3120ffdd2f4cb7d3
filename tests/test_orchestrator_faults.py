"""``histo serve`` against a real ``prefect server start``, both started here and stopped at
the end: the deployments it registers, and runs that survive the orchestrator (issue 25):

* the five deployments exist with their schedules, time zone and concurrency settings;
* two retrain deployments started at once on one data root: the second waits for the run
  guard, and a server restart while the first trains kills neither; the run's artifacts
  (summary, epochs, model card, data docs) are readable through the API;
* the serving process and its flow run are SIGKILLed mid-training: the heartbeat
  automation marks the run Crashed, the retry automation reschedules it, the serve
  process comes back and the run resumes from ``last.pt`` and decides;
* a backlog of due runs (a late worker): one watcher runs, the others are cancelled by
  the deployment's CANCEL_NEW or, when the worker reaches them after it, by the watcher's
  own check; of three due nightly retrains only the newest works.

A manual run with parameters is the killed-worker test's (``prefect deployment run
--param``). The watcher -> ``histo.data.arrived`` -> trigger path is run end to end by
test_worker_e2e on prefect.yaml's deployments; test_deployment_files shows that
``histo serve`` declares the same trigger, schedules and parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from histo_core.config import SMOKE_WIDTH
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from prefect_server import client_call, deployments, prefect_server, stop_group, wait_for

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# Long enough to restart the server or kill the worker mid-training: at SMOKE_WIDTH an
# epoch of these 200 patches takes a second or two on one core.
EPOCHS = 8


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orchestrator")
    write_kaggle_layout(tmp / "data", SyntheticSpec(count=200, seed=3))
    (tmp / "home").mkdir()
    with prefect_server(tmp / "server", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5") as server:
        # Created from automations.yaml as it stands, its 90 s heartbeat window included: a
        # 45 s window (to keep the killed-worker test short) marked a waiting run Crashed
        # when the server's restart took long on a busy machine (the heartbeats sent while
        # it is down are lost, and they come every 30 s, Prefect's minimum).
        operations = [a for a in yaml.safe_load((REPO / "automations.yaml").read_text())["automations"]
                      if "send-notification" not in {x["type"] for x in a["actions"]}]
        (tmp / "operations.yaml").write_text(yaml.safe_dump({"automations": operations}))
        done = subprocess.run([str(Path(sys.executable).with_name("prefect")), "automation", "create",
                               "--from-file", str(tmp / "operations.yaml")],
                              env=server["env"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        from prefect.settings import PREFECT_API_URL, temporary_settings

        site = {"tmp": tmp, "server": server, "serve": None}
        try:
            with temporary_settings(updates={PREFECT_API_URL: server["api"]}):
                _serve(site)
                yield site
        finally:
            if site["serve"] is not None:
                stop_group(site["serve"])


def _serve(site) -> None:
    """``histo serve`` as a worker machine runs it, heartbeats on, HOME (and so the run
    guard's lock folder) its own, and TMPDIR: what Prefect's runner keeps there
    (``runner_storage/``), a SIGKILLed one leaves behind."""
    tmp = site["tmp"]
    (tmp / "serve-tmp").mkdir(exist_ok=True)
    env = {**site["server"]["env"], "HOME": str(tmp / "home"), "TMPDIR": str(tmp / "serve-tmp"),
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = open(tmp / "serve.log", "a")
    site["serve"] = subprocess.Popen(
        [str(Path(sys.executable).with_name("histo")), "serve", "--data", str(tmp / "data"),
         "--store", str(tmp / "store"), "--workdir", str(tmp / "work"), "--epochs", str(EPOCHS),
         "--train.width", str(SMOKE_WIDTH),
         "--cron", "0 0 1 1 *", "--timezone", "Europe/Amsterdam", "--watch-every", "86400"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: len(_deployment_ids()) == 5, 120, "the served deployments")


def _deployment_ids() -> dict[str, object]:
    try:
        return {name: d.id for name, d in deployments().items()}
    except Exception:  # the server is restarting
        return {}


def _run(deployment: str, **kwargs):
    from prefect.deployments import run_deployment

    return run_deployment(f"{'watch-new-data' if deployment == 'watch-new-data' else 'retrain'}/{deployment}",
                          timeout=0, **kwargs)


def _read(run_id):
    return client_call(lambda client: client.read_flow_run(run_id))


def _logs(run_id) -> list[tuple[dt.datetime, str]]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read(client):
        return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)

    return [(log.timestamp, log.message) for log in client_call(read)]


def _final(run_id, timeout: float):
    def finished():
        try:
            run = _read(run_id)
        except Exception:
            return None
        return run if run.state.is_final() else None

    return wait_for(finished, timeout, f"flow run {run_id} to finish", interval=2)


def test_the_served_deployments_have_their_schedules_and_limits(site):
    found = deployments()
    nightly = found["retrain-nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("0 0 1 1 *", "Europe/Amsterdam")
    assert found["watch-new-data"].schedules[0].schedule.interval.total_seconds() == 86400
    # Retrains are serialized by the run guard, not a server lease (a restart would revoke
    # it); the watcher keeps one slot and cancels a late worker's backlog.
    for name in ("retrain-nightly", "retrain-on-new-data"):
        assert found[name].global_concurrency_limit is None, name
    on_new_data = f"prefect.deployment.{found['retrain-on-new-data'].id}"
    [trigger] = client_call(lambda client: client.read_resource_related_automations(on_new_data))
    assert trigger.name == "new labelled data" and trigger.trigger.expect == {"histo.data.arrived"}, trigger
    watcher = found["watch-new-data"]
    assert watcher.global_concurrency_limit.limit == 1
    assert watcher.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert not found["predict"].schedules and not found["rollback"].schedules


def _artifacts(run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    return {a.key: a for a in client_call(read)}


def test_a_second_deployment_waits_and_a_server_restart_kills_no_run(site):
    first = _run("retrain-nightly")
    second = _run("retrain-on-new-data")
    waiting = wait_for(lambda: next((r for r in (first, second) if any(
        "held by flow run" in m for _, m in _logs(r.id))), None), 240, "one run to wait for the other")
    holder = first if waiting.id == second.id else second
    assert _read(holder.id).state.is_running()
    site["server"]["restart"]()  # mid-training: with a deployment lease this killed the run
    for run in (holder, waiting):
        state = _final(run.id, 400).state
        assert state.is_completed(), f"{run.name}: {state.type} {state.message}"
    holder_end = _read(holder.id).end_time
    started_work = [t for t, m in _logs(waiting.id) if m.startswith("run ") and ": data " in m]
    assert started_work and started_work[0] >= holder_end, "the second run worked while the first held the root"
    artifacts = _artifacts(holder.id)
    assert {"retrain-summary", "retrain-epochs", "retrain-model-card", "retrain-data-docs"} <= set(artifacts)
    assert re.search(r"## Retrain: \*\*(promoted|rejected)\*\*", artifacts["retrain-summary"].data)
    assert "hold-out AUC: challenger" in artifacts["retrain-summary"].data


def _new_last_pt(site, before: set[Path]) -> Path | None:
    return next((p for p in (site["tmp"] / "work").rglob("last.pt") if p not in before), None)


def test_a_killed_worker_is_marked_crashed_retried_and_resumes(site):
    before = set((site["tmp"] / "work").rglob("last.pt"))
    # Started as the README says a user starts a custom run: partial overrides on the CLI.
    started = subprocess.run([str(Path(sys.executable).with_name("prefect")), "deployment", "run",
                              "retrain/retrain-nightly", "--param", 'overrides={"train": {"seed": 7}}'],
                             env=site["server"]["env"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    run = _read(re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1))
    assert run.parameters["overrides"] == {"train": {"seed": 7}}
    last = wait_for(lambda: _new_last_pt(site, before), 300, "the first epoch's last.pt")
    os.killpg(site["serve"].pid, signal.SIGKILL)  # the worker and the flow's process, no goodbye
    site["serve"].wait(10)
    assert _read(run.id).state.is_running()  # a zombie, until the heartbeat automation acts
    wait_for(lambda: _read(run.id).state.type.value in ("CRASHED", "SCHEDULED"), 240,
             "the heartbeat automation to mark the run Crashed")
    _serve(site)  # the worker comes back
    final = _final(run.id, 420)
    assert final.state.is_completed(), f"{final.state.type} {final.state.message}"
    assert final.run_count == 2
    messages = [m for _, m in _logs(run.id)]
    assert any("attempt 2 of 3" in m for m in messages)
    assert any(m.startswith(f"resuming from {last}") for m in messages), messages
    history = json.loads((last.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))


def test_a_late_worker_runs_one_watcher_and_only_the_newest_due_retrain(site):
    now = dt.datetime.now(dt.timezone.utc)
    watchers = [_run("watch-new-data", scheduled_time=now - dt.timedelta(minutes=5 * k)) for k in range(4)]
    nightlies = [_run("retrain-nightly", scheduled_time=now - dt.timedelta(days=k)) for k in range(3)]
    watched = [_final(r.id, 300) for r in watchers]
    assert sorted(r.state.type.value for r in watched) == ["CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED"]
    # One more that was due before the look was taken (as a watcher the worker reaches in a
    # later poll is): nothing is running, so the CANCEL_NEW limit lets it start, and it
    # ends Cancelled itself, naming the run that looked.
    [looked] = [r for r in watched if r.state.is_completed()]
    late = _final(_run("watch-new-data", scheduled_time=now - dt.timedelta(minutes=1)).id, 300).state
    assert late.is_cancelled() and f"Flow run {looked.name} ({looked.id}) looked at" in late.message, late
    retrained = [_final(r.id, 400).state for r in nightlies]
    assert retrained[0].is_completed(), retrained[0].message  # the newest: due now
    for older in retrained[1:]:
        assert older.is_cancelled() and f"Superseded by flow run {nightlies[0].name}" in older.message
