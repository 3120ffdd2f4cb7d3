"""The promotion step's outcomes against a real store: promoted, and "conflict" when the
champion moved after this run evaluated it, or while it was writing the pointer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import publish_real_version, publish_version, write_weights
from histo_core import steps
from histo_core.config import GateConfig, SplitConfig, StoreConfig, ValidationConfig
from histo_core.layout import DatasetDir, ModelDir, RunDir
from histo_core.registry import Registry
from histo_core.storage import LocalStore

METRICS = {"auc": 0.9, "auc_ci_low": 0.85, "auc_ci_high": 0.95, "accuracy": 0.8, "sensitivity": 0.8,
           "specificity": 0.8, "n": 60}
GATE = GateConfig(auc_floor=0.5)


@pytest.fixture(scope="module")
def split(kaggle_root, tmp_path_factory):
    dataset = steps.validate(str(kaggle_root), DatasetDir(tmp_path_factory.mktemp("dataset")), ValidationConfig())
    return steps.split(dataset, SplitConfig())


def _evaluated_run(tmp_path: Path, champion_version: str | None, champion_etag: str | None) -> tuple[RunDir, ModelDir]:
    """A run folder as ``evaluate`` leaves it, and a model folder with real (untrained)
    weights: a version must load before the champion pointer may name it."""
    run, model = RunDir(tmp_path / "run"), ModelDir(tmp_path / "model")
    run.root.mkdir()
    model.root.mkdir()
    write_weights(model.best)
    model.history.write_text("[]")
    run.evaluation.write_text(json.dumps({
        "challenger": {**METRICS, "auc": 0.95}, "champion": METRICS if champion_version else None,
        "champion_version": champion_version, "champion_etag": champion_etag,
        "comparison": {"auc_difference": 0.05, "difference_ci_low": 0.01, "difference_ci_high": 0.09,
                       "p_value": 0.01} if champion_version else None, "tta": False}))
    return run, model


def _decision(run: RunDir) -> dict:
    return json.loads(run.decision.read_text())


def test_a_winner_is_promoted_and_filed_complete(split, tmp_path):
    run, model = _evaluated_run(tmp_path, None, None)
    steps.promote(run, model, split, StoreConfig(uri=str(tmp_path / "store")), "m", GATE)
    decision = _decision(run)
    registry = Registry(LocalStore(tmp_path / "store"), "m")
    assert decision["outcome"] == "promoted" and registry.champion().version == decision["version"]
    assert set(registry.version(decision["version"])["files"]) >= {"model.pt", "model_card.md", "config.json"}


def test_a_champion_promoted_after_evaluation_is_a_conflict_and_stays(split, tmp_path):
    registry = Registry(LocalStore(tmp_path / "store"), "m")
    run, model = _evaluated_run(tmp_path, None, None)  # evaluated when there was no champion
    rival = publish_version(registry, tmp_path, "rival")
    registry.set_champion(rival, None)  # ... then another run promoted its model

    steps.promote(run, model, split, StoreConfig(uri=str(tmp_path / "store")), "m", GATE)
    decision = _decision(run)
    assert decision["outcome"] == "conflict" and decision["champion"] == rival
    assert any("changed underneath" in r for r in decision["reasons"])
    assert registry.champion().version == rival
    assert decision["version"] in registry.versions(), "the challenger is still filed, complete"
    events = [Path(k).name for k in registry.store.list("models/m/events")]
    assert any(f"-conflict-{decision['version']}" in e for e in events)


class _RivalPromotesWhileWriting(LocalStore):
    """Another run moves the champion between this run's check and its conditional write
    of the pointer: a race the conditional write must lose cleanly."""

    rival: str | None = None

    def put_json_if(self, key, data, expected_etag):
        if key.endswith("champion.json") and self.rival:
            rival, self.rival = self.rival, None
            current = Registry(LocalStore(self.root), "m").champion()
            Registry(LocalStore(self.root), "m").set_champion(rival, current)
        return super().put_json_if(key, data, expected_etag)


def test_a_champion_moved_during_the_pointer_write_is_a_conflict(split, tmp_path, monkeypatch):
    registry = Registry(LocalStore(tmp_path / "store"), "m")
    old = publish_version(registry, tmp_path, "old")
    registry.set_champion(old, None)
    champion = registry.champion()
    run, model = _evaluated_run(tmp_path, old, champion.etag)
    racing = _RivalPromotesWhileWriting(tmp_path / "store")
    racing.rival = rival = publish_version(registry, tmp_path, "rival")
    monkeypatch.setattr("histo_core.storage.open_store", lambda cfg: racing)

    steps.promote(run, model, split, StoreConfig(uri=str(tmp_path / "store")), "m", GATE)
    decision = _decision(run)
    assert racing.rival is None, "the rival's promotion ran"
    assert decision["outcome"] == "conflict" and decision["champion"] == rival
    assert registry.champion().version == rival
    assert any("champion changed underneath" in r for r in decision["reasons"])


def _corrupt(store_root: Path, version: str, how: str) -> None:
    weights = store_root / "models/m/versions" / version / "model.pt"
    if how == "deleted":
        weights.unlink()
    elif how == "flipped":
        raw = bytearray(weights.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        weights.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["deleted", "flipped", "wrong architecture"])
def test_a_version_that_cannot_serve_is_never_made_champion(tmp_path, capsys, how):
    from histo_cli.main import main
    from histo_core.registry import open_registry

    store = tmp_path / "store"
    registry = open_registry(str(store), "m")
    good = publish_real_version(registry, tmp_path, seed=1)
    registry.set_champion(good, None)
    if how == "wrong architecture":  # resnet18's weights, recorded as the seed CNN
        import torch

        from histo_core.model import create_model

        torch.save({"model": create_model("resnet18").state_dict(), "model_name": "simple_cnn", "model_kwargs": {}},
                   tmp_path / "bad.pt")
        broken = registry.new_version_id()
        registry.publish_version(broken, {"model.pt": tmp_path / "bad.pt"}, {})
    else:
        broken = publish_real_version(registry, tmp_path, seed=2)
        _corrupt(store, broken, how)

    assert main(["models", "promote", broken, "--store", str(store), "--model-name", "m"]) == 1
    err = capsys.readouterr().err
    assert f"m {broken} cannot serve" in err and "the champion was not moved" in err
    assert registry.champion().version == good
    assert main(["models", "verify", "--store", str(store), "--model-name", "m"]) == 1
    out = capsys.readouterr().out
    assert f"* {good}  ok" in out and f"  {broken}  UNUSABLE: " in out and "1 of 2 versions of m can serve" in out


def test_a_version_id_is_never_a_path(tmp_path, capsys):
    from histo_cli.main import main

    other = open_registry_at(tmp_path / "store", "other")
    version = publish_real_version(other, tmp_path, seed=1)
    assert main(["models", "promote", f"../../other/versions/{version}", "--store", str(tmp_path / "store"),
                 "--model-name", "m"]) == 2
    assert "is not a version id" in capsys.readouterr().err
    assert not (tmp_path / "store" / "models" / "m" / "champion.json").exists()


def open_registry_at(root: Path, name: str):
    from histo_core.registry import open_registry

    return open_registry(str(root), name)


def test_rollback_passes_over_an_earlier_champion_that_cannot_serve(tmp_path):
    registry = open_registry_at(tmp_path / "store", "m")
    first, second, third = (publish_real_version(registry, tmp_path, seed=s) for s in (1, 2, 3))
    for version in (first, second, third):
        registry.set_champion(version, registry.champion())
    _corrupt(tmp_path / "store", second, "deleted")
    assert registry.rollback() == (third, first)
    rollback = [e for e in registry.events() if e["kind"] == "rollback"][-1]
    assert list(rollback["passed_over"]) == [second] and "no such object" in rollback["passed_over"][second]
    with pytest.raises(Exception, match="no earlier champion"):
        registry.rollback()


def test_the_audit_trail_is_written_before_the_pointer_moves(split, tmp_path, monkeypatch):
    """The store fails exactly at the pointer write (a full disk): the run's decision and
    the event are already there, and the champion did not move."""
    from histo_core.storage import StoreError

    def full_disk(self, key, data, expected_etag):
        raise StoreError(f"{self.uri}/{key}: [Errno 28] No space left on device")

    run, model = _evaluated_run(tmp_path, None, None)
    monkeypatch.setattr(LocalStore, "put_json_if", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        steps.promote(run, model, split, StoreConfig(uri=str(tmp_path / "store")), "m", GATE)
    registry = Registry(LocalStore(tmp_path / "store"), "m")
    decision = _decision(run)
    assert decision["outcome"] == "promoted" and registry.champion() is None
    assert [e["kind"] for e in registry.events()] == ["promoted"]
    assert registry.events()[0]["version"] == decision["version"]


@pytest.mark.parametrize("challenger", ["new weights", "the champion's own weights"])
def test_a_champion_that_cannot_serve_is_reported_and_the_run_goes_on(split, tmp_path, challenger):
    """Its weights were deleted from the store: the challenger is judged as if there were
    no champion, the reason is recorded, and a winner replaces the broken one, even when
    it is the champion's own weights trained again (a re-run on unchanged data): filed
    anew, they serve again."""
    from histo_core.config import EvalConfig

    store = StoreConfig(uri=str(tmp_path / "store"))
    registry = open_registry_at(tmp_path / "store", "m")
    broken = publish_real_version(registry, tmp_path, seed=5)
    registry.set_champion(broken, None)
    _corrupt(tmp_path / "store", broken, "deleted")
    run, model = RunDir(tmp_path / "run"), ModelDir(tmp_path / "model")
    model.root.mkdir()
    if challenger == "new weights":
        write_weights(model.best, seed=6)
    else:
        shutil.copy(tmp_path / "w5.pt", model.best)  # the bytes the broken version's record names
    model.history.write_text("[]")
    steps.evaluate(split, model, run, tmp_path / "cache", store, "m", EvalConfig(tta=False, bootstrap=100))
    evaluation = json.loads(run.evaluation.read_text())
    assert evaluation["champion"] is None and "no such object" in evaluation["champion_problem"]
    steps.promote(run, model, split, store, "m", GateConfig(auc_floor=0.0))
    decision = _decision(run)
    assert decision["outcome"] == "promoted" and registry.champion().version == decision["version"] != broken
    assert any(f"the champion {broken} cannot serve" in r for r in decision["reasons"])
    assert not registry.verify(decision["version"])  # the new champion serves
