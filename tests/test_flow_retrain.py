"""The retrain flow end to end on a tiny generated data set, against a real (temporary)
``prefect server start`` (tests/prefect_server.py); its store in a folder or, in one test,
on a real S3 endpoint (moto's server)."""

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from histo_flows.retrain import retrain
from histo_core.config import SMOKE_WIDTH, EvalConfig, GateConfig, RetrainConfig, StoreConfig, TrainConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.storage import LocalStore
from conftest import tree_fingerprint
from prefect_server import drain_prefect_clients, prefect_server
from s3_servers import start_moto


# Evaluation is not what these tests are about: no TTA, fewer bootstrap draws.
FAST = EvalConfig(tta=False, bootstrap=100)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(tmp_path_factory.mktemp("prefect")) as server:
        with temporary_settings(updates={PREFECT_API_URL: server["api"]}):
            yield
            drain_prefect_clients()


def test_two_runs_promote_then_gate_against_the_champion(prefect_api, tmp_path):
    data = tmp_path / "data"
    write_kaggle_layout(data / "batches" / "b1", SyntheticSpec(count=240, seed=5))
    before = tree_fingerprint(data)
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(tmp_path / "store")), workdir=str(tmp_path / "work"),
                           train=TrainConfig(epochs=1, width=SMOKE_WIDTH, batch_size=32), evaluation=FAST, gate=GateConfig(auc_floor=0.5))

    first = retrain(config)
    assert first["outcome"] == "promoted" and first["champion"] == first["version"]
    assert first["previous_champion"] is None

    write_kaggle_layout(data / "batches" / "b2", SyntheticSpec(count=80, seed=6))
    # An impossible margin: the second challenger must be rejected and the champion kept.
    strict = config.model_copy(update={"gate": GateConfig(auc_floor=0.5, min_improvement=1.0,
                                                          max_sensitivity_drop=0.0)})
    second = retrain(strict)
    assert second["outcome"] == "rejected"
    assert second["previous_champion"] == first["version"] == second["champion"]
    assert second["champion_auc"] is not None
    assert any("margin 1.0000" in r for r in second["reasons"])
    assert any(r.startswith("sensitivity at the operating point") for r in second["reasons"])

    store = LocalStore(tmp_path / "store")
    assert store.get_json("models/pcam-cnn/champion.json")["version"] == first["version"]
    for run in (first, second):
        keys = store.list(f"runs/{run['run_id']}")
        assert {f"runs/{run['run_id']}/{n}" for n in ("manifest.csv", "validation.json", "split.csv",
                                                      "evaluation.json", "decision.json")} <= set(keys)
        version = store.get_json(f"models/pcam-cnn/versions/{run['version']}/version.json")
        assert set(version["files"]) == {"model.pt", "metrics.json", "config.json", "roc.png", "pr.png",
                                         "reliability.png", "history.json", "training.json", "model_card.md"}
        card = (tmp_path / "store" / f"models/pcam-cnn/versions/{run['version']}/model_card.md").read_text()
        assert "## Intended use" in card and "same slides as the training images" in card
        assert "trained on: cpu in " in card and "best (lowest val loss) at epoch 1" in card
        assert "## Operating point" in card and "Wilson" in card
    events = store.list("models/pcam-cnn/events")
    assert [e.split("-")[1] for e in (Path(k).name for k in events)] == ["promoted", "rejected"]
    assert store.get_json(f"runs/{second['run_id']}/validation.json")["counts"] == {"ok": 320}
    assert store.exists(f"runs/{second['run_id']}/data_docs/index.html")
    assert store.exists(f"runs/{second['run_id']}/train/history.json")
    assert tree_fingerprint(data) == {**before, **{k: v for k, v in tree_fingerprint(data).items()
                                                   if "/b2/" in k}}
    _assert_summary_readable_through_the_api(second)


def _assert_summary_readable_through_the_api(result: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def latest(key):
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                sort=ArtifactSort.CREATED_DESC, limit=1)
            return found[0]

    summary = asyncio.run(latest("retrain-summary"))
    assert result["version"] in summary.data and "hold-out AUC" in summary.data
    epochs = asyncio.run(latest("retrain-epochs"))
    assert "val_auc" in str(epochs.data)


def test_a_rejected_data_set_fails_the_run_with_its_reason(prefect_api, tmp_path):
    data = tmp_path / "data"
    write_kaggle_layout(data, SyntheticSpec(count=40, seed=1, tumour_fraction=0.0, label_noise=0.0))
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(tmp_path / "s")), workdir=str(tmp_path / "w"))
    from prefect.exceptions import FailedRun

    with pytest.raises(FailedRun, match=r"only label \['0'\] present.*the champion is unchanged"):
        retrain(config)  # an expected outcome: a Failed run with one paragraph, no traceback
    reports = list((tmp_path / "w" / "datasets").glob("*/validation.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["verdict"] == "stopped"


async def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_reruns_reuse_their_own_workdir_and_a_deleted_one_is_rebuilt(prefect_api, tmp_path):
    """The same data retrained from two workdirs (one Prefect home): each run trains and
    evaluates in its own workdir. A rerun on unchanged data skips the split and training
    (Cached) and files nothing new; deleting a workdir costs the next run on it a
    recomputation, never an error or the other workdir's files."""
    import shutil

    from histo_core.registry import open_registry

    data = tmp_path / "data"
    write_kaggle_layout(data, SyntheticSpec(count=160, seed=21))

    def config(workdir: str) -> RetrainConfig:
        return RetrainConfig(data=str(data), store=StoreConfig(uri=str(tmp_path / workdir / "store")),
                             workdir=str(tmp_path / workdir), train=TrainConfig(epochs=1, width=SMOKE_WIDTH, batch_size=32),
                             evaluation=FAST, gate=GateConfig(auc_floor=0.0))

    def owned(result: dict, workdir: str) -> None:
        assert Path(result["run_dir"]).is_relative_to(tmp_path / workdir)
        trained = list((tmp_path / workdir / "models").glob("*/training.json"))
        assert len(trained) == 1, f"{workdir} holds its own trained model"
        evaluated = json.loads((Path(result["run_dir"]) / "evaluation.json").read_text())
        assert evaluated["challenger"]["auc"] == result["challenger_auc"]

    first = retrain(config("w1"))
    second = retrain(config("w2"))
    for run in (first, second):
        assert asyncio.run(_task_states(run["flow_run_id"]))["train-model"] == "Completed"
    owned(first, "w1")
    owned(second, "w2")

    # The first workdir deleted. The second's rerun on unchanged data finds its own cache
    # (its training above was not the first's) ...
    shutil.rmtree(tmp_path / "w1")
    again = retrain(config("w2"))
    states = asyncio.run(_task_states(again["flow_run_id"]))
    assert {k: states[k] for k in ("split-data", "train-model")} == {"split-data": "Cached", "train-model": "Cached"}
    # Validation runs, and finds its earlier verdict standing (it depends on the store's batch verdicts too).
    assert states["validate-data"] == states["evaluate-models"] == states["promote-model"] == "Completed"
    assert again["challenger_auc"] == second["challenger_auc"]  # the same model, scored again
    # ... and does not make it a new champion: the pointer stays where it was ...
    assert (again["outcome"], again["champion"]) == ("rejected", second["version"])
    assert "weights are the champion's" in again["reasons"][-2]
    # ... nor at all: the decision names the version it repeats, and no 11 MB copy is made.
    assert again["version"] == second["version"] and "no new version is filed" in again["reasons"][-1]
    registry = open_registry(config("w2").store, config("w2").model_name)
    assert registry.versions() == [second["version"]]
    assert [e["kind"] for e in registry.events()][-1] == "rejected"
    owned(again, "w2")
    assert not (tmp_path / "w1").exists(), "a run on one workdir wrote into the deleted one"
    # The deleted workdir's cached outputs are gone: its tasks run again instead of
    # pointing at nothing (Prefect's cache records of them are still there).
    rebuilt = retrain(config("w1"))
    assert asyncio.run(_task_states(rebuilt["flow_run_id"]))["train-model"] == "Completed"
    owned(rebuilt, "w1")


def test_predict_and_rollback_flows(prefect_api, tmp_path, kaggle_root):
    import pandas as pd
    import torch

    from histo_flows.predict import predict
    from histo_flows.rollback import rollback
    from histo_core.config import PredictConfig
    from histo_core.model import create_model
    from histo_core.registry import Registry

    store_cfg = StoreConfig(uri=str(tmp_path / "store"))
    registry = Registry(LocalStore(tmp_path / "store"), "pcam-cnn")
    versions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        weights = tmp_path / f"{seed}.pt"
        torch.save({"model": create_model("simple_cnn").state_dict(), "model_name": "simple_cnn",
                    "model_kwargs": {"dropout": 0.5}}, weights)
        versions.append(registry.new_version_id())
        registry.publish_version(versions[-1], {"model.pt": weights}, {})
        registry.set_champion(versions[-1], registry.champion())

    out = predict(PredictConfig(data=str(kaggle_root), out=str(tmp_path / "p.csv"), store=store_cfg))
    table = pd.read_csv(out)
    assert len(table) == 300 and table["label"].between(0, 1).all()
    # A named version, and images that cannot be scored: the CSV is written, the run fails.
    folder = tmp_path / "mixed"
    folder.mkdir()
    for image in sorted((kaggle_root / "train").iterdir())[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.tif").write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="1 of 3 images could not be scored"):
        predict(PredictConfig(data=str(folder), out=str(tmp_path / "m.csv"), store=store_cfg, version=versions[0]))
    by_version = pd.read_csv(tmp_path / "m.csv")
    assert len(by_version) == 2 and pd.read_csv(tmp_path / "m.errors.csv")["id"].tolist() == ["broken"]
    older = table.set_index("id").loc[by_version["id"], "label"].to_numpy()  # scored by the champion
    assert not np.allclose(by_version["label"], older), "the named version, not the champion, scored"
    # Too few readable images to adapt to: the run fails at once, naming the count; not retried
    # (the task's two retries would wait 5 s, then 10 s, to fail the same way).
    from histo_core.errors import TooFewImagesToAdapt

    started = time.monotonic()
    with pytest.raises(TooFewImagesToAdapt, match="at least 256 readable images, and there are 2"):
        predict(PredictConfig(data=str(folder), out=str(tmp_path / "a.csv"), store=store_cfg, adapt_to_data=True))
    assert time.monotonic() - started < 10, "retried"
    assert not (tmp_path / "a.csv").exists()

    assert rollback(store=store_cfg, model_name="pcam-cnn") == {"from": versions[1], "to": versions[0]}
    assert registry.champion().version == versions[0]
    with pytest.raises(ValueError, match="config.data is empty"):
        predict(PredictConfig(data="", store=store_cfg))


def test_validation_retries_network_trouble_but_not_a_rejected_data_set(prefect_api):
    """The validate task's own retry settings, on a task that fails each way for real."""
    from collections import Counter

    from prefect import flow, task

    from histo_core.data.sources import DataSourceError
    from histo_core.errors import DependencyError
    from histo_core.validation import DataValidationError
    from histo_tasks.retrain import validate_data

    failures = {"rejected": DataValidationError("data set rejected: only label ['1'] present"),
                "unreadable": DataSourceError("labels.csv: not UTF-8"),
                "library": DependencyError("great_expectations cannot be imported"),
                "network": ConnectionError("connection reset by peer")}
    attempts: Counter[str] = Counter()

    @task(retries=validate_data.retries, retry_delay_seconds=0, retry_condition_fn=validate_data.retry_condition_fn)
    def failing_step(kind: str) -> None:
        attempts[kind] += 1
        raise failures[kind]

    @flow
    def run(kind: str) -> None:
        failing_step(kind)

    for kind, error in failures.items():
        with pytest.raises(type(error)):
            run(kind)
    assert validate_data.retries == 2
    assert attempts == {"rejected": 1, "unreadable": 1, "library": 1, "network": 3}


def _events(names: set[str], data: Path, expected: int, timeout: float = 30.0) -> list[dict]:
    """Events of ``names`` about data root ``data``, as the API server stored them (it
    persists them in batches), oldest first."""
    import time

    from prefect.client.orchestration import get_client

    async def read() -> list[dict]:
        async with get_client() as client:
            response = await client._client.post("/events/filter", json={
                "filter": {"event": {"name": sorted(names)}, "occurred": {"since": "2000-01-01T00:00:00Z"},
                           "resource": {"id": [f"histo.data-root.{data}"]}, "order": "ASC"},
                "limit": 50})
            return response.json()["events"]

    deadline = time.monotonic() + timeout
    while True:
        found = asyncio.run(read())
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_a_bad_batch_costs_itself_and_is_announced_and_a_rejected_data_set_is_readable(prefect_api, tmp_path):
    """The corrupt batch is left out and announced once; the good batches train and the
    decision is announced. Then a night whose accepted data is unusable fails in one
    paragraph, with its record uploaded and a failure event."""
    from histo_tasks import events

    data = tmp_path / "data"
    write_kaggle_layout(data / "batches" / "good", SyntheticSpec(count=160, seed=41))
    write_kaggle_layout(data / "batches" / "corrupt", SyntheticSpec(count=30, seed=42))
    for image in sorted((data / "batches" / "corrupt" / "train").iterdir())[:10]:
        image.write_bytes(b"\x00" * 64)  # truncated uploads
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(tmp_path / "store")),
                           workdir=str(tmp_path / "work"), train=TrainConfig(epochs=1, width=SMOKE_WIDTH, batch_size=32),
                           evaluation=EvalConfig(tta=False, bootstrap=100), gate=GateConfig(auc_floor=0.0))
    first = retrain(config)
    assert first["outcome"] == "promoted"
    second = retrain(config)  # the same data: nothing new to announce about the batch
    store = LocalStore(tmp_path / "store")
    validation = store.get_json(f"runs/{first['run_id']}/validation.json")
    assert validation["batches"]["corrupt"]["verdict"] == "rejected"
    assert "10 of 30 labelled rows quarantined" in validation["batches"]["corrupt"]["reasons"][0]
    assert validation["counts"] == {"ok": 160}

    found = _events({events.BATCH_REJECTED, events.PROMOTED, events.MODEL_REJECTED}, data, expected=3)
    by_name: dict[str, list[dict]] = {}
    for event in found:
        by_name.setdefault(event["event"], []).append(event["payload"])
    assert [p["batch"] for p in by_name[events.BATCH_REJECTED]] == ["corrupt"]
    assert by_name[events.BATCH_REJECTED][0]["run_id"] == first["run_id"]
    assert [p["version"] for p in by_name[events.PROMOTED]] == [first["version"]]
    assert [p["run_id"] for p in by_name[events.MODEL_REJECTED]] == [second["run_id"]]

    # Every accepted row of one class only: the data set is rejected, readably.
    only_normal = tmp_path / "only-normal"
    write_kaggle_layout(only_normal / "batches" / "b1", SyntheticSpec(count=40, seed=43, tumour_fraction=0.0,
                                                                      label_noise=0.0))
    state = retrain(config.model_copy(update={"data": str(only_normal)}), return_state=True)
    assert state.is_failed()
    message = state.message
    assert "was rejected (data set rejected: only label ['0'] present" in message
    assert "/validation.json" in message and "the champion is unchanged" in message
    run_id = message.split()[1]
    assert store.get_json(f"runs/{run_id}/validation.json")["verdict"] == "stopped"
    assert store.exists(f"runs/{run_id}/manifest.csv") and store.exists(f"runs/{run_id}/config.json")
    failed = _events({events.FAILED}, only_normal, expected=1)
    assert failed and failed[0]["payload"]["data"] == str(only_normal) and "rejected" in failed[0]["payload"]["message"]


def test_a_run_that_crashed_max_attempts_times_gives_up_and_says_so(prefect_api, tmp_path, monkeypatch):
    """The crash retry (automations.yaml) reschedules a crashed run without counting; the
    flow counts its own starts and stops. A fourth start is faked here (its three crashes
    are what tests/test_orchestrator_faults.py causes for real, once, at two minutes each)."""
    from prefect.states import State

    from histo_tasks import events, run_control

    monkeypatch.setattr(run_control, "run_count", lambda: 4)
    data = tmp_path / "data"
    write_kaggle_layout(data, SyntheticSpec(count=60, seed=3))
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(tmp_path / "s")), workdir=str(tmp_path / "w"))
    state = retrain(config, return_state=True)
    assert isinstance(state, State) and state.is_failed()
    assert "started 4 times (max_attempts 3)" in state.message
    assert not (tmp_path / "w").exists() and not (tmp_path / "s").exists()  # nothing was started
    [gave_up] = _events({events.GAVE_UP}, data, expected=1)
    assert gave_up["payload"]["attempts"] == 4 and gave_up["payload"]["flow_run_id"] == str(state.state_details.flow_run_id)


@pytest.fixture
def moto(tmp_path_factory):
    endpoint = start_moto(tmp_path_factory.mktemp("moto"))
    yield endpoint
    endpoint.stop()


def test_retrain_to_s3_keeps_credentials_out_of_logs_and_artifacts(prefect_api, moto, tmp_path, monkeypatch, caplog,
                                                                  capsys):
    """The store on a real S3 endpoint (moto's server); the credentials, in the environment
    only, never reach a log line or a stored artifact."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    client = moto.client()
    client.create_bucket(Bucket="histo-flow")
    data = tmp_path / "data"
    write_kaggle_layout(data, SyntheticSpec(count=300, seed=4))
    config = RetrainConfig(data=str(data), workdir=str(tmp_path / "work"),
                           store=StoreConfig(uri="s3://histo-flow/team-a", endpoint_url=moto.url),
                           train=TrainConfig(epochs=1, width=SMOKE_WIDTH), evaluation=FAST, gate=GateConfig(auc_floor=0.0))
    result = retrain(config)
    assert result["outcome"] == "promoted"
    assert result["artifacts"].startswith("s3://histo-flow/team-a/runs/")

    keys = [o["Key"] for o in client.list_objects_v2(Bucket="histo-flow")["Contents"]]
    assert "team-a/models/pcam-cnn/champion.json" in keys
    assert f"team-a/models/pcam-cnn/versions/{result['version']}/model_card.md" in keys
    secrets = [moto.secret_key.encode(), moto.access_key.encode()]
    for key in keys:
        body = client.get_object(Bucket="histo-flow", Key=key)["Body"].read()
        assert not any(s in body for s in secrets), key
    for path in Path(tmp_path / "work").rglob("*"):
        if path.is_file():
            assert not any(s in path.read_bytes() for s in secrets), path
    logged = caplog.text + "".join(capsys.readouterr())
    assert "champion" in logged and not any(s.decode() in logged for s in secrets)
