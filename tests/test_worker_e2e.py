"""Production as a user sets it up, on one machine: a ``prefect server start``; the
deployments registered from the repository's ``prefect.yaml`` with ``prefect deploy``;
a ``prefect worker start`` in an empty folder of its own, running the wheel-installed
environment (no checkout, no PYTHONPATH); data root and store on an S3 endpoint (moto's
server), with credentials only in the worker's environment.

``prefect.yaml`` is deployed as it stands except for the values a user edits: the
``definitions`` (data root, store, a one-epoch schedule, a gate floor that a one-epoch
model clears, evaluation without TTA: the served deployments' runs in
test_orchestrator_faults evaluate with it) and the nightly cron, made every minute so
that the scheduler fires while the test waits, and the watcher's interval schedule off,
as the test runs it by hand. A scheduled run and a run triggered by the watcher's
``histo.data.arrived`` event each complete, and after each the champion pointer in the
bucket is what that run's decision says. (A run started by hand, with parameters, is
test_orchestrator_faults's killed-worker test; a rerun on unchanged data that reuses the
cached model is test_flow_retrain's.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from histo_core.config import SMOKE_WIDTH
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from installed import REPO
from prefect_server import client_call, deployments, flow_runs, prefect_server, stop_group, wait_for
from s3_servers import start_moto

pytestmark = pytest.mark.slow

DATA_BUCKET, STORE_BUCKET = "histo-data-e2e", "histo-models-e2e"
DATA_ROOT, STORE_URI = f"s3://{DATA_BUCKET}/pcam", f"s3://{STORE_BUCKET}/pcam"
NAMES = {"retrain-nightly", "retrain-on-new-data", "watch-new-data", "predict", "rollback"}


def _mapping_set(node: yaml.MappingNode, key: str, text: str) -> None:
    """Set ``key`` of a composed YAML mapping to the YAML ``text``, keeping every alias."""
    value = yaml.compose(text)
    for k, old in node.value:
        if k.value == key:
            old.__class__, old.__dict__ = value.__class__, {**value.__dict__, "anchor": getattr(old, "anchor", None)}
            return  # changed in place: every alias of the node sees the new value
    node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", key), value))


def _child(node: yaml.MappingNode, key: str) -> yaml.Node:
    return next(v for k, v in node.value if k.value == key)


def site_prefect_yaml(endpoint: str) -> str:
    """The repository's prefect.yaml with this site's values, as a user would edit it."""
    root = yaml.compose((REPO / "prefect.yaml").read_text())
    definitions = _child(root, "definitions")
    _mapping_set(definitions, "data_root", DATA_ROOT)
    store = _child(definitions, "store")
    _mapping_set(store, "uri", STORE_URI)
    _mapping_set(store, "endpoint_url", endpoint)
    _mapping_set(store, "region", "us-east-1")
    config = _child(definitions, "retrain_config")
    _mapping_set(_child(config, "train"), "epochs", "1")
    _mapping_set(_child(config, "train"), "width", str(SMOKE_WIDTH))  # the pipeline is under test, not the model
    _mapping_set(config, "gate", "{auc_floor: 0.5}")
    _mapping_set(config, "evaluation", "{bootstrap: 200, tta: false}")  # TTA: the served deployments' runs
    [nightly] = [d for d in _child(root, "deployments").value if _child(d, "name").value == "retrain-nightly"]
    _mapping_set(_child(nightly, "schedules").value[0], "cron", "'* * * * *'")
    # The test runs the watcher by hand, so that its event comes after the runs above.
    [watcher] = [d for d in _child(root, "deployments").value if _child(d, "name").value == "watch-new-data"]
    _mapping_set(_child(watcher, "schedules").value[0], "active", "false")
    return yaml.serialize(root)


def _upload_batch(s3, batch: str, folder: Path) -> None:
    """Images first, labels last: the watcher counts a batch once its labels are there."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.suffix == ".csv"):
        s3.upload_file(str(path), DATA_BUCKET, f"pcam/batches/{batch}/{path.relative_to(folder)}")


@pytest.fixture(scope="module")
def site(tmp_path_factory, installed_env):
    tmp = tmp_path_factory.mktemp("worker-e2e")
    moto = start_moto(tmp)
    s3 = moto.client()
    for bucket in (DATA_BUCKET, STORE_BUCKET):
        s3.create_bucket(Bucket=bucket)
    # The first batch is there before the nightly schedule can fire.
    write_kaggle_layout(tmp / "b1", SyntheticSpec(count=300, seed=31))
    _upload_batch(s3, "b1", tmp / "b1")
    (tmp / "deploy").mkdir()
    (tmp / "deploy" / "prefect.yaml").write_text(site_prefect_yaml(moto.url))
    (tmp / "server").mkdir()
    with prefect_server(tmp / "server", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5") as server:
        prefect = str(Path(sys.executable).with_name("prefect"))
        deployer = {**server["env"], "PREFECT_HOME": str(tmp / "deployer-home")}
        for args in (["work-pool", "create", "histo-gpu", "--type", "process"],
                     ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([prefect, *args], cwd=tmp / "deploy", env=deployer, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        # The worker: another folder, another HOME, the installed package only, and the
        # S3 credentials in its environment (the boto3 chain), nowhere else.
        # TMPDIR: Prefect's process worker keeps each flow run's environment (the keys
        # included, mode 0600) in a temporary folder that it removes when the run ends, and
        # cannot remove once the worker is killed, as it is below: here, not in /tmp.
        (tmp / "worker" / "home").mkdir(parents=True)
        (tmp / "worker" / "tmp").mkdir()
        worker_env = installed_env.env(**moto.env(), HOME=str(tmp / "worker" / "home"), TMPDIR=str(tmp / "worker" / "tmp"),
                                       PREFECT_HOME=str(tmp / "worker" / "home" / ".prefect"),
                                       PREFECT_API_URL=server["api"], PREFECT_WORKER_QUERY_SECONDS="2",
                                       PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
        log = open(tmp / "worker.log", "w")
        worker = subprocess.Popen([str(installed_env.python), "-m", "prefect", "worker", "start",
                                   "--pool", "histo-gpu", "--type", "process", "--limit", "1"],
                                  cwd=tmp / "worker", env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings(updates={PREFECT_API_URL: server["api"]}):
                yield {"tmp": tmp, "s3": s3, "moto": moto, "worker_log": tmp / "worker.log",
                       "worker_home": tmp / "worker" / "home"}
        finally:
            stop_group(worker, grace=3)  # it waits 20 s or more on SIGTERM; nothing of it is checked after
            moto.stop()


def _json_object(s3, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=STORE_BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _decision_of(site, run) -> dict:
    """The decision the run uploaded with its record (runs/<stamp>-<flow run name>/)."""
    keys = [o["Key"] for o in site["s3"].list_objects_v2(Bucket=STORE_BUCKET, Prefix="pcam/runs/").get("Contents", [])]
    [key] = [k for k in keys if k.endswith(f"-{run.name}/decision.json")]
    return _json_object(site["s3"], key)


def _assert_champion_follows(site, run, champion_before: str | None) -> str:
    decision = _decision_of(site, run)
    pointer = _json_object(site["s3"], "pcam/models/pcam-cnn/champion.json")
    assert decision["outcome"] in {"promoted", "rejected"}, decision
    assert decision["previous_champion"] == champion_before
    expected = decision["version"] if decision["outcome"] == "promoted" else champion_before
    assert pointer and pointer["version"] == expected == decision["champion"], (decision, pointer)
    version = _json_object(site["s3"], f"pcam/models/pcam-cnn/versions/{decision['version']}/version.json")
    assert version is not None, "every challenger is filed as a complete version"
    return pointer["version"]


def _completed(deployment_name: str, predicate=lambda run: True, timeout: float = 420):
    deployment = wait_for(lambda: deployments().get(deployment_name), 60, deployment_name)

    def done():
        runs = [r for r in flow_runs(deployment.id) if predicate(r) and r.state and r.state.is_final()]
        return runs[0] if runs else None

    return wait_for(done, timeout, f"a finished run of {deployment_name}", 3)


def test_deployed_from_prefect_yaml_with_no_path_of_this_machine(site):
    found = wait_for(lambda: (d := deployments()) and NAMES <= set(d) and d, 60, "the deployments")
    for name in NAMES:
        deployment = found[name]
        assert deployment.entrypoint.startswith("histo_flows."), deployment.entrypoint
        assert not deployment.pull_steps, deployment.pull_steps
        assert str(site["tmp"]) not in json.dumps(deployment.model_dump(mode="json")), name
        assert str(REPO) not in json.dumps(deployment.model_dump(mode="json")), name
        parameters = json.dumps(deployment.parameters)
        assert site["moto"].secret_key not in parameters and site["moto"].access_key not in parameters


def test_scheduled_then_event_triggered_runs_move_the_champion(site, tmp_path):
    from prefect.deployments import run_deployment

    # 1. The scheduler's run of retrain-nightly (cron every minute here).
    scheduled = _completed("retrain-nightly", lambda r: r.auto_scheduled)
    nightly = deployments()["retrain-nightly"]

    async def pause_and_clear(client):
        """Pause the cron and wait until no run of it is left to start: scheduled ones are
        deleted, but one the worker already took (its prefetch) or that the scheduler wrote
        as the pause landed must end first, or it would train on the batch uploaded below
        (and a cron run that came due while an identical run was starting would supersede
        it, as a late worker's backlog is)."""
        await client.pause_deployment(nightly.id)
        left = False
        for run in await client.read_flow_runs(limit=200):
            if run.deployment_id == nightly.id and run.state and not run.state.is_final():
                left = True
                if run.state.is_scheduled():
                    await client.delete_flow_run(run.id)
        return not left

    wait_for(lambda: client_call(pause_and_clear), 420, "the paused cron's runs to end", 5)
    assert scheduled.state.is_completed(), f"{scheduled.state} (worker log: {site['worker_log']})"
    champion = _assert_champion_follows(site, scheduled, None)

    # 2. A new batch lands; the watcher (run by hand here) announces it; the trigger runs
    #    retrain-on-new-data on the data root named by the event.
    write_kaggle_layout(tmp_path / "b2", SyntheticSpec(count=300, seed=32))
    _upload_batch(site["s3"], "b2", tmp_path / "b2")
    watched = run_deployment("watch-new-data/watch-new-data", timeout=300)
    assert watched.state.is_completed(), f"{watched.state} (worker log: {site['worker_log']})"
    triggered = _completed("retrain-on-new-data")
    assert triggered.state.is_completed(), f"{triggered.state} (worker log: {site['worker_log']})"
    assert triggered.parameters["config"]["data"] == DATA_ROOT
    _assert_champion_follows(site, triggered, champion)

    # The worker kept its caches where prefect.yaml says, under its own home.
    assert any((site["worker_home"] / ".cache" / "histo-retrain" / "models").iterdir())
    secret = site["moto"].secret_key
    assert not any(secret in p.read_text(errors="ignore") for p in site["tmp"].rglob("*.log"))
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != secret  # only the worker had the credentials
