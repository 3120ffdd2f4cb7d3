"""Ids, labels and file names from other people stay data: refused by validation with a
reason where they are unsafe, quoted where a spreadsheet would run them, never twice in
a data set or a submission (issue 22, items 2 and 3)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import tree_fingerprint, write_weights
from hostile import CONTROL_IDS, FORMULA_IDS, LONG_ID, MARKUP_IDS, ODD_IDS, _tissue, write_hostile_root
from histo_cli.main import main
from histo_core import steps
from histo_core.config import ValidationConfig
from histo_core.data.manifest import build_manifest
from histo_core.layout import DatasetDir
from histo_core.tables import FORMULA_LEAD, neutralise, read_csv, restore, write_csv
from histo_core.validation import validate_manifest

LENIENT = ValidationConfig(max_quarantine_fraction=0.9)


def _number(cell: str) -> bool:
    """A spreadsheet reads ``-1`` as the number -1, not a formula."""
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _status(result, image_id):
    row = result.rows[result.rows["id"] == image_id].iloc[0]
    return row["status"], row["reason"]


def test_unsafe_ids_are_quarantined_with_a_reason_and_odd_but_harmless_ones_kept(tmp_path):
    write_hostile_root(tmp_path / "data")
    before = tree_fingerprint(tmp_path / "data")
    result = validate_manifest(build_manifest(tmp_path / "data"), LENIENT)
    assert tree_fingerprint(tmp_path / "data") == before
    for image_id in FORMULA_IDS:
        assert _status(result, image_id) == ("quarantined", f"id {image_id!r} starts with '=', '+', '-' or '@', "
                                                            "which a spreadsheet runs as a formula")
    for image_id in CONTROL_IDS:
        status, reason = _status(result, image_id)
        assert status == "quarantined" and "control character" in reason
    assert _status(result, LONG_ID) == ("quarantined", "id of 300 characters; ids are 1 to 256")
    for image_id in ODD_IDS + [i for i in MARKUP_IDS if "/" not in i]:
        assert _status(result, image_id) == ("ok", ""), image_id  # text, shown escaped wherever it is shown


def test_data_validate_prints_unsafe_ids_as_escaped_text_one_row_per_line(tmp_path, capsys):
    """The terminal is an output too: an id with a line break or an escape sequence is
    printed as its repr, never raw (it would forge lines or drive the terminal)."""
    write_hostile_root(tmp_path / "data")
    main(["data", "validate", str(tmp_path / "data"), "--show", "100", "--max-quarantine-fraction", "0.9"])
    out = capsys.readouterr().out
    for image_id in CONTROL_IDS:
        assert image_id not in out and repr(image_id) in out
    assert f"{LONG_ID[:80]}..." in out and LONG_ID not in out


def test_written_csvs_hold_no_formula_cell_and_read_back_unchanged(tmp_path):
    labels = write_hostile_root(tmp_path / "data")
    dataset = steps.validate(str(tmp_path / "data"), DatasetDir(tmp_path / "ds"), LENIENT, tmp_path / "m")
    with open(dataset.manifest, newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert cells and not [c for c in cells if c.startswith(FORMULA_LEAD) and not _number(c)]
    assert "'=HYPERLINK(\"http://evil.example\",\"x\")" in cells
    manifest = steps.read_manifest(dataset.manifest)
    assert sorted(manifest["id"]) == sorted(labels["id"])
    assert sorted(manifest["label"]) == sorted(labels["label"])


@pytest.mark.parametrize("text", ["=1+1", "+a", "-b", "@c", "\td", "\re", "'f", "''g", "plain", "", "a=b"])
def test_neutralising_a_cell_is_reversed_exactly(text):
    assert restore(neutralise(text)) == text
    assert not neutralise(text).startswith(FORMULA_LEAD)


def test_numbers_stay_numbers_in_a_written_csv(tmp_path):
    write_csv(pd.DataFrame({"id": ["-x"], "logit": [-1.5]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "id,logit\n'-x,-1.5\n"
    assert read_csv(tmp_path / "t.csv").to_dict("records") == [{"id": "-x", "logit": -1.5}]


def _batch(root: Path, name: str, ids: list[str], labels: list[int], seed: int = 0) -> None:
    folder = root / "batches" / name / "images"
    folder.mkdir(parents=True)
    for n, image_id in enumerate(ids):
        Image.fromarray(_tissue(seed + n)).save(folder / f"{image_id}.png")
    pd.DataFrame({"id": ids, "label": labels}).to_csv(folder.parent / "labels.csv", index=False)


def test_an_id_in_two_batches_is_a_finding_and_the_first_is_kept(tmp_path):
    ids = [f"p{i}" for i in range(40)]
    _batch(tmp_path, "b1", ids, [i % 2 for i in range(40)])
    _batch(tmp_path, "b2", ids[:2] + [f"q{i}" for i in range(38)], [i % 2 for i in range(40)])  # same pixels, ids
    result = validate_manifest(build_manifest(tmp_path), LENIENT)
    repeats = result.rows[result.rows["id"].isin(["p0", "p1"])]
    assert repeats.groupby("batch")["status"].apply(set).to_dict() == {"b1": {"ok"}, "b2": {"quarantined"}}
    assert repeats[repeats["batch"] == "b2"]["reason"].str.contains("already in the data set").all()
    assert not result.rows[result.rows["status"] != "quarantined"]["id"].duplicated().any()


def test_a_corrected_batch_does_not_clash_with_the_rejected_one_it_replaces(tmp_path):
    ids = [f"p{i}" for i in range(40)]
    _batch(tmp_path, "b1", ids, [i % 2 for i in range(40)])
    first = validate_manifest(build_manifest(tmp_path), LENIENT)
    rejected = {**first.batches["b1"], "verdict": "rejected"}  # as an operator's data team would have it
    _batch(tmp_path, "b1-fixed", ids, [i % 2 for i in range(40)])
    again = validate_manifest(build_manifest(tmp_path), LENIENT, known_verdicts={"b1": rejected})
    assert again.batches["b1-fixed"]["verdict"] == "accepted"
    assert set(again.rows["batch"]) == {"b1-fixed"} and (again.rows["status"] == "ok").all()


def test_a_file_labelled_by_two_rows_is_a_finding(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(30):
        Image.fromarray(_tissue(i)).save(images / f"f{i}.png")
    rows = [(f"f{i}", i % 2, f"images/f{i}.png") for i in range(30)] + [("alias", 1, "images/f3.png")]
    pd.DataFrame(rows, columns=["id", "label", "filename"]).to_csv(tmp_path / "labels.csv", index=False)
    result = validate_manifest(build_manifest(tmp_path), LENIENT)
    assert _status(result, "alias") == ("quarantined", "its image file is already labelled by an earlier row; "
                                                       "one file, one row")
    assert _status(result, "f3") == ("ok", "")


def test_predict_refuses_to_write_a_submission_with_an_id_twice(tmp_path, capsys):
    _batch(tmp_path / "data", "b1", ["a", "b"], [0, 1])
    _batch(tmp_path / "data", "b2", ["b", "c"], [1, 0])
    weights = write_weights(tmp_path / "w.pt")
    code = main(["predict", "--data", str(tmp_path / "data"), "--checkpoint", str(weights),
                 "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "1 id(s) occur more than once" in err and "'b' in" in err and "/b2/" in err
    assert not (tmp_path / "s.csv").exists()


def test_predict_quotes_formula_ids_in_its_submission(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for n, image_id in enumerate(["=1+1", "@x", "plain"]):
        Image.fromarray(_tissue(n)).save(folder / f"{image_id}.png")
    weights = write_weights(tmp_path / "w.pt")
    assert main(["predict", "--data", str(folder), "--checkpoint", str(weights), "--out", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv", newline="") as f:
        ids = [row[0] for row in csv.reader(f)][1:]
    assert sorted(ids) == ["'=1+1", "'@x", "plain"]
    assert sorted(read_csv(tmp_path / "s.csv", dtype={"id": str})["id"]) == ["=1+1", "@x", "plain"]
    shutil.rmtree(folder)


def _labels(root: Path, text: str) -> Path:
    (root / "images").mkdir(parents=True)
    Image.fromarray(_tissue(0)).save(root / "images" / "a.png")
    (root / "labels.csv").write_text(text)
    return root


@pytest.mark.parametrize("text, message", [
    ("id,label\na,1\n" + "x" * 5000 + ",1\n", "labels.csv: line 3 is longer than 4,096 bytes"),
    ("id,label\n" + "a,1\n" * 500_001, "labels.csv: more than 500,000 rows; split it into batches"),
])
def test_a_labels_file_no_real_one_resembles_is_refused_before_parsing(tmp_path, text, message):
    from histo_core.data.sources import DataSourceError, list_images

    root = _labels(tmp_path / "data", text)
    with pytest.raises(DataSourceError, match=message):
        list_images(root)


def test_an_oversized_labels_file_is_refused_by_its_size_alone(tmp_path, monkeypatch):
    from histo_core.data import sources

    root = _labels(tmp_path / "data", "id,label\na,1\n" * 100)
    monkeypatch.setattr(sources, "MAX_LABELS_BYTES", 1000)
    with pytest.raises(sources.DataSourceError, match=r"labels.csv: 1,300 bytes, more than the 1,000 a labels file may have"):
        sources.list_images(root)


def test_a_batch_with_a_hostile_labels_file_is_rejected_and_the_others_go_on(tmp_path):
    _batch(tmp_path, "good", [f"g{i}" for i in range(40)], [i % 2 for i in range(40)])
    _labels(tmp_path / "batches" / "bad", "id,label\n" + "x" * 5000 + ",1\n")
    result = validate_manifest(build_manifest(tmp_path, faults=(faults := {})), LENIENT, batch_faults=faults)
    assert result.batches["bad"]["verdict"] == "rejected" and "longer than 4,096 bytes" in \
        result.batches["bad"]["reasons"][0]
    assert result.batches["good"]["verdict"] == "accepted" and result.passed


def test_each_image_file_is_opened_once_however_many_rows_name_it(tmp_path, monkeypatch):
    from histo_core.data import manifest

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(_tissue(i)).save(images / f"f{i}.png")
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(1000)], "label": [i % 2 for i in range(1000)],
                         "filename": [f"images/f{i % 2}.png" for i in range(1000)]})
    rows.to_csv(tmp_path / "labels.csv", index=False)
    opened = []
    inspect = manifest.inspect_image
    monkeypatch.setattr(manifest, "inspect_image", lambda path, root=None: opened.append(path) or inspect(path, root))
    table = build_manifest(tmp_path, workers=1)
    assert sorted(opened) == sorted(str(images / f"f{i}.png") for i in range(2))
    assert table["pixel_sha256"].nunique() == 2 and (table["pixel_sha256"] != "").all()
    result = validate_manifest(table, LENIENT)
    assert (result.rows["status"] == "quarantined").sum() == 998
