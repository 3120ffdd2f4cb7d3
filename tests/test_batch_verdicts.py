"""Per-batch verdicts: a bad batch is judged once, left out of every data set, and the
data set of the good batches goes on; an operator readmits with one call."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from histo_core import steps
from histo_core.batch_verdicts import VerdictError, VerdictStore, root_key
from histo_core.config import StoreConfig, ValidationConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.layout import DatasetDir
from histo_core.storage import LocalStore
from conftest import tree_fingerprint


def _garble_labels(batch: Path, every: int) -> None:
    """Every ``every``-th label becomes text a labeller might type: its rows are quarantined."""
    csv = batch / "train_labels.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *[(line.rsplit(",", 1)[0] + ",yes") if i % every == 0 else line
                                          for i, line in enumerate(lines[1:])]]) + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """b1, b4: good; b2: a fifth of its labels garbage; b3: a labels file that is not UTF-8."""
    data = tmp_path / "data"
    write_kaggle_layout(data / "batches" / "b1", SyntheticSpec(count=60, seed=31))
    write_kaggle_layout(data / "batches" / "b2", SyntheticSpec(count=40, seed=32))
    _garble_labels(data / "batches" / "b2", every=5)
    write_kaggle_layout(data / "batches" / "b3", SyntheticSpec(count=20, seed=33))
    (data / "batches" / "b3" / "train_labels.csv").write_bytes(b"id,label\n\xe9t\xe9,1\n")
    write_kaggle_layout(data / "batches" / "b4", SyntheticSpec(count=60, seed=34))
    return data


def _validate(data: Path, tmp_path: Path, store: StoreConfig) -> dict:
    dataset = DatasetDir(tmp_path / "dataset")
    steps.validate(str(data), dataset, ValidationConfig(), tmp_path / "manifests", store=store)
    return json.loads(dataset.validation.read_text())


def test_bad_batches_are_left_out_once_and_the_good_ones_train(root, tmp_path, caplog):
    store = StoreConfig(uri=str(tmp_path / "store"))
    before = tree_fingerprint(root)
    report = _validate(root, tmp_path, store)

    assert report["verdict"] == "passed"
    verdicts = {b: v["verdict"] for b, v in report["batches"].items()}
    assert verdicts == {"b1": "accepted", "b2": "rejected", "b3": "rejected", "b4": "accepted"}
    assert "8 of 40 labelled rows quarantined (20%, limit 5%): 8 x label 'yes' is not 0 or 1" in \
        report["batches"]["b2"]["reasons"][0]
    assert "not UTF-8" in report["batches"]["b3"]["reasons"][0]
    manifest = steps.read_manifest(tmp_path / "dataset" / "manifest.csv")
    assert set(manifest["batch"]) == {"b1", "b4"} and len(manifest) == 120
    assert tree_fingerprint(root) == before, "the data root is read-only to the pipeline"

    recorded = VerdictStore(LocalStore(tmp_path / "store"), str(root)).all()
    assert {b: r["verdict"] for b, r in recorded.items()} == verdicts
    assert LocalStore(tmp_path / "store").list(f"batches/{root_key(str(root))}") == \
        [f"batches/{root_key(str(root))}/b{i}.json" for i in range(1, 5)]

    # The next night: nothing is judged again, and no new verdict is filed.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "batches").rglob("*.json")}
    with caplog.at_level(logging.INFO, logger="histo_core.steps"):
        again = _validate(root, tmp_path, store)
    assert "its verdict stands (passed)" in caplog.text
    assert {b: v["new"] for b, v in again["batches"].items()} == dict.fromkeys(verdicts, True)  # as first written
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "batches").rglob("*.json")} == stamps

    # A new good batch arrives: judged alone, accepted; the rejected ones stay out.
    write_kaggle_layout(root / "batches" / "b5", SyntheticSpec(count=60, seed=35))
    later = _validate(root, tmp_path, store)
    assert {b: (v["verdict"], v["new"]) for b, v in later["batches"].items()} == {
        "b1": ("accepted", False), "b2": ("rejected", False), "b3": ("rejected", False),
        "b4": ("accepted", False), "b5": ("accepted", True)}
    assert later["drift"]["batch"] == "b5", "drift looks at the batch that arrived last"


def test_an_operator_readmits_a_batch_and_a_batch_changed_in_place_is_judged_again(root, tmp_path):
    store = StoreConfig(uri=str(tmp_path / "store"))
    _validate(root, tmp_path, store)
    verdicts = VerdictStore(LocalStore(tmp_path / "store"), str(root))
    readmitted = verdicts.readmit("b2", "checked by hand: 'yes' rows are left out, the rest is fine")
    assert readmitted["verdict"] == "readmitted" and readmitted["previous"]["verdict"] == "rejected"
    with pytest.raises(VerdictError, match="already readmitted"):
        verdicts.readmit("b2", "again")
    with pytest.raises(VerdictError, match="no verdict"):
        verdicts.readmit("b9", "never seen")

    report = _validate(root, tmp_path, store)
    assert report["batches"]["b2"]["verdict"] == "readmitted"
    manifest = steps.read_manifest(tmp_path / "dataset" / "manifest.csv")
    assert (manifest["batch"] == "b2").sum() == 40 and (manifest["status"] == "quarantined").sum() == 8

    # b3's uploader fixes its labels file in place: its content changed, so it is judged afresh.
    shutil.rmtree(root / "batches" / "b3")
    write_kaggle_layout(root / "batches" / "b3", SyntheticSpec(count=20, seed=33))
    fixed = _validate(root, tmp_path, store)
    assert (fixed["batches"]["b3"]["verdict"], fixed["batches"]["b3"]["new"]) == ("accepted", True)
    assert verdicts.all()["b3"]["verdict"] == "accepted"


def test_without_a_store_a_bad_batch_still_only_costs_itself(root, tmp_path):
    """``histo train`` and notebooks validate without a store: the same verdicts, none recorded."""
    dataset = DatasetDir(tmp_path / "dataset")
    steps.validate(str(root), dataset, ValidationConfig(), tmp_path / "manifests")
    report = json.loads(dataset.validation.read_text())
    assert report["verdict"] == "passed" and sorted(report["batches"]) == ["b1", "b2", "b3", "b4"]
    assert [b for b, v in report["batches"].items() if v["verdict"] == "rejected"] == ["b2", "b3"]
