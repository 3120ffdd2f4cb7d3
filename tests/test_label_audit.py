"""The label audit (histo_core.label_audit): a batch with flipped labels is held, not
trained on; clean batches pass; the verdict is recorded once. With a real champion trained
here on generated patches, through ``steps.validate`` and a real store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tree_fingerprint
from histo_core import steps
from histo_core.batch_verdicts import VerdictStore
from histo_core.config import SMOKE_WIDTH, StoreConfig, TrainConfig, ValidationConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.label_audit import audit_batches, auc_variance, random_effects
from histo_core.layout import DatasetDir, ModelDir
from histo_core.registry import open_registry
from histo_core.storage import open_store


def _flip(batch: Path, fraction: float, seed: int = 0) -> None:
    labels = pd.read_csv(batch / "train_labels.csv", dtype=str)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    labels.loc[flip, "label"] = labels.loc[flip, "label"].map({"0": "1", "1": "0"})
    labels.to_csv(batch / "train_labels.csv", index=False)


@pytest.fixture(scope="module")
def champion_store(kaggle_split, tmp_path_factory) -> StoreConfig:
    """A store whose champion is the default architecture at SMOKE_WIDTH, trained for one
    epoch on generated patches (AUC 0.81-0.91 on the clean batches below, 0.07 on the
    flipped one)."""
    tmp = tmp_path_factory.mktemp("audit-champion")
    model = ModelDir(tmp / "model")
    steps.train(kaggle_split, model, tmp / "cache", TrainConfig(epochs=1, min_epochs=1, num_workers=0, width=SMOKE_WIDTH))
    store = StoreConfig(uri=str(tmp / "store"))
    registry = open_registry(store, "pcam-cnn")
    version = registry.new_version_id()
    registry.publish_version(version, {"model.pt": model.best}, {"metrics": {}})
    registry.set_champion(version, None)
    return store


def test_a_batch_with_flipped_labels_is_held_and_clean_ones_pass(champion_store, tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        write_kaggle_layout(data / "batches" / f"clean{i}", SyntheticSpec(count=100, seed=40 + i))
    # A mixed-up export: every label inverted. (The champion trained here in seconds is
    # weak; bench/label_audit.py measures subtler flips with real-data champions.)
    write_kaggle_layout(data / "batches" / "flipped", SyntheticSpec(count=100, seed=50))
    _flip(data / "batches" / "flipped", 1.0)
    before = tree_fingerprint(data)
    dataset = DatasetDir(tmp_path / "dataset")
    steps.validate(str(data), dataset, ValidationConfig(), tmp_path / "manifests", store=champion_store,
                   model_name="pcam-cnn")
    report = json.loads(dataset.validation.read_text())
    verdicts = {b: v["verdict"] for b, v in report["batches"].items()}
    assert verdicts == {"clean0": "accepted", "clean1": "accepted", "clean2": "accepted", "clean3": "accepted",
                        "flipped": "held"}, {b: v.get("audit") for b, v in report["batches"].items()}
    held = report["batches"]["flipped"]
    assert "label audit: the champion ranks this batch's 100 labels at AUC" in held["reasons"][0]
    assert held["audit"]["auc"] < held["audit"]["reference"]["auc"] - 0.05
    assert report["verdict"] == "passed"  # the data set goes on without the held batch
    manifest = steps.read_manifest(dataset.manifest)
    assert set(manifest["batch"]) == {"clean0", "clean1", "clean2", "clean3"}
    assert tree_fingerprint(data) == before  # the data is read, never changed
    # Recorded once: a second look reuses the verdicts and scores nothing.
    recorded = VerdictStore(open_store(champion_store), str(data)).all()
    assert recorded["flipped"]["verdict"] == "held" and recorded["flipped"]["audit"]["rows"] == 100


def _verdicts(batches: dict[str, int]) -> dict[str, dict]:
    return {b: {"batch": b, "verdict": "accepted", "reasons": [], "new": True} for b in batches}


def _rows(batches: dict[str, int], n: int = 200) -> pd.DataFrame:
    """``n`` rows per batch; the path names the true label and the label column is flipped
    for the given number of rows per batch."""
    frames = []
    for batch, flipped in batches.items():
        truth = np.arange(n) % 2
        label = truth.copy()
        label[:flipped] = 1 - label[:flipped]
        frames.append(pd.DataFrame({"batch": batch, "labelled": True, "status": "ok", "label": label.astype(str),
                                    "path": [f"{batch}/{t}/{i}" for i, t in enumerate(truth)]}))
    return pd.concat(frames, ignore_index=True)


def _knows_the_truth(paths: list[str], calls_everything_0: bool = False) -> np.ndarray:
    """A stand-in champion that is right on 90% of the patches (every tenth one wrong).
    ``calls_everything_0``: the same ranking shifted below the 0.5 threshold, as a young
    one-epoch champion scores (it ranks, but calls every patch normal)."""
    truth = np.array([int(p.split("/")[1]) for p in paths])
    wrong = np.arange(len(paths)) % 10 == 5
    logits = np.where(truth ^ wrong, 3.0, -3.0) + np.linspace(-0.5, 0.5, len(paths))
    return logits - 10 if calls_everything_0 else logits


def _states(verdicts: dict[str, dict]) -> dict[str, str]:
    return {b: v["verdict"] for b, v in verdicts.items()}


def test_the_rule_margin_chance_and_what_cannot_be_audited():
    batches = {"a": 0, "b": 0, "c": 0, "small_excess": 10, "flipped": 40}  # flipped rows of 200
    verdicts = _verdicts(batches)
    audit_batches(verdicts, _rows(batches), _knows_the_truth, ValidationConfig())
    assert _states(verdicts) == {
        "a": "accepted", "b": "accepted", "c": "accepted", "small_excess": "accepted", "flipped": "held"}
    assert verdicts["flipped"]["audit"]["drop"] > 0.1 and verdicts["flipped"]["audit"]["z"] > 3

    alone = _verdicts({"only": 0})
    audit_batches(alone, _rows({"only": 0}), _knows_the_truth, ValidationConfig())
    assert alone["only"]["verdict"] == "accepted" and alone["only"]["audit"]["reference"] is None

    few = _verdicts({"a": 0, "tiny": 0})
    audit_batches(few, _rows({"a": 0, "tiny": 0}, n=20), _knows_the_truth, ValidationConfig())
    assert "fewer than label_audit_min_rows" in few["tiny"]["audit"]["skipped"]

    no_champion = _verdicts({"a": 0})
    audit_batches(no_champion, _rows({"a": 0}), lambda paths: None, ValidationConfig())
    assert "no champion" in no_champion["a"]["audit"]["skipped"]

    off = _verdicts(batches)
    audit_batches(off, _rows(batches), _knows_the_truth, ValidationConfig(label_audit_margin=0))
    assert all(v["verdict"] == "accepted" and "audit" not in v for v in off.values())


def test_a_young_champion_that_calls_everything_0_still_catches_flipped_labels():
    """The first audit compared 0.5-threshold disagreement: a champion that calls every
    patch 0 disagrees with every batch's positives alike, so 20% flipped passed (season.py,
    nights 5 and 15). Its ranking still shows them."""
    batches = {"a": 0, "b": 0, "c": 0, "d": 0, "flipped": 40}
    verdicts = _verdicts(batches)
    audit_batches(verdicts, _rows(batches), lambda p: _knows_the_truth(p, calls_everything_0=True),
                  ValidationConfig())
    assert _states(verdicts)["flipped"] == "held"
    assert {b: v["audit"]["rate"] for b, v in verdicts.items() if b != "flipped"} == dict.fromkeys("abcd", 0.5)


def test_what_the_ranking_cannot_judge_is_accepted_with_the_reason():
    one_class = _verdicts({"a": 0, "b": 0, "positives_only": 0})
    rows = _rows({"a": 0, "b": 0, "positives_only": 0})
    rows.loc[rows["batch"] == "positives_only", "label"] = "1"
    audit_batches(one_class, rows, _knows_the_truth, ValidationConfig())
    assert one_class["positives_only"]["verdict"] == "accepted"
    assert "one class only" in one_class["positives_only"]["audit"]["skipped"]

    coin = _verdicts({"a": 0, "b": 0, "c": 0, "flipped": 40})
    audit_batches(coin, _rows({"a": 0, "b": 0, "c": 0, "flipped": 40}),
                  lambda p: np.random.default_rng(len(p)).normal(size=len(p)), ValidationConfig())
    assert _states(coin)["flipped"] == "accepted"
    assert "too weak" in coin["flipped"]["audit"]["skipped"]


def test_the_band_widens_with_the_spread_between_clean_batches():
    """AUC variance (Hanley-McNeil) shrinks with batch size; between-batch spread (tau,
    DerSimonian-Laird) appears only when the batches differ more than sampling explains."""
    assert auc_variance(0.9, 500, 500) < auc_variance(0.9, 50, 50)
    alike = random_effects([0.90, 0.91, 0.90, 0.91], [auc_variance(0.9, 150, 150)] * 4)
    spread = random_effects([0.80, 0.95, 0.85, 0.93], [auc_variance(0.9, 150, 150)] * 4)
    assert alike[2] == 0 and spread[2] > 0.001
    assert abs(alike[0] - 0.905) < 1e-6
