"""The promotion step's outcomes against a real store: promoted, and "conflict" when the
champion moved after this run evaluated it, or while it was writing the pointer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import publish_version
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
    """A run folder as ``evaluate`` leaves it, and a trained model folder (weights: any bytes;
    the registry never looks inside them)."""
    run, model = RunDir(tmp_path / "run"), ModelDir(tmp_path / "model")
    run.root.mkdir()
    model.root.mkdir()
    model.best.write_bytes(b"challenger weights" * 100)
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
    monkeypatch.setattr(steps, "open_store", lambda cfg: racing)

    steps.promote(run, model, split, StoreConfig(uri=str(tmp_path / "store")), "m", GATE)
    decision = _decision(run)
    assert racing.rival is None, "the rival's promotion ran"
    assert decision["outcome"] == "conflict" and decision["champion"] == rival
    assert registry.champion().version == rival
    assert any("champion changed underneath" in r for r in decision["reasons"])
