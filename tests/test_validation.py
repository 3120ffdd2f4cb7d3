from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tree_fingerprint
from histo_core.config import ValidationConfig
from histo_core.data.manifest import build_manifest
from histo_core.validation import DataValidationError, require_passed, validate_manifest


def _tissue(seed):
    return np.random.default_rng(seed).integers(60, 200, (96, 96, 3), dtype=np.uint8)


@pytest.fixture
def bad_corpus(tmp_path):
    """A labels-CSV data set with 30 good rows and one row for each kind of problem."""
    img = tmp_path / "images"
    img.mkdir()
    rows = []
    for i in range(30):
        Image.fromarray(_tissue(i)).save(img / f"good{i}.png")
        rows.append((f"good{i}", i % 2))
    Image.fromarray(_tissue(100)).convert("L").save(img / "grey.png")
    Image.fromarray(_tissue(101)).convert("RGBA").save(img / "rgba.png")
    Image.fromarray(_tissue(102)[:50, :50]).save(img / "small.png")
    (img / "empty.png").write_bytes(b"")
    (img / "text.png").write_text("hello")
    Image.fromarray(_tissue(103)).save(img / "badlabel.png")
    Image.fromarray(_tissue(104)).save(img / "dup.png")
    Image.fromarray(np.full((96, 96, 3), 245, np.uint8)).save(img / "blank.png")
    rows += [("grey", 1), ("rgba", 0), ("small", 1), ("empty", 0), ("text", 1), ("badlabel", 2),
             ("dup", 0), ("dup", 1), ("missing", 0), ("../escape", 1), ("blank", 0)]
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{lab}\n" for i, lab in rows))
    return tmp_path


EXPECTED = {
    "grey": "image mode 'L' is not 8-bit RGB",
    "rgba": "image mode 'RGBA' is not 8-bit RGB",
    "small": "size 50x50, expected 96x96",
    "empty": "empty file (0 bytes)",
    "text": "unreadable image",
    "badlabel": "label '2' is not 0 or 1",
    "dup": "id 'dup' appears more than once with different labels or pixels",
    "missing": "no image file at",
    "../escape": "not a safe file name",
}


def test_each_bad_row_is_quarantined_with_its_reason(bad_corpus):
    before = tree_fingerprint(bad_corpus)
    result = validate_manifest(build_manifest(bad_corpus), ValidationConfig(max_quarantine_fraction=0.5))
    assert tree_fingerprint(bad_corpus) == before, "validation must not touch the inputs"
    rows = result.rows
    for image_id, reason in EXPECTED.items():
        got = rows[rows["id"] == image_id]
        assert (got["status"] == "quarantined").all(), image_id
        assert got["reason"].str.contains(reason, regex=False).all(), (image_id, got["reason"].tolist())
    blank = rows[rows["id"] == "blank"].iloc[0]
    assert (blank["status"], blank["reason"]) == ("warning", "near-blank patch (100% glass or black)")
    assert (rows[rows["id"].str.startswith("good")]["status"] == "ok").all()
    assert result.passed
    report = result.report()
    assert report["verdict"] == "passed"
    assert len(report["rows"]) == len(rows) and report["counts"]["quarantined"] == 10


def test_too_many_quarantined_rows_stop_the_run(bad_corpus):
    result = validate_manifest(build_manifest(bad_corpus))  # default limit 5%
    assert not result.passed
    with pytest.raises(DataValidationError,
                       match=r"10 of 41 rows \(24\.39%\) quarantined, above the limit of 5\.00%"):
        require_passed(result)


@pytest.mark.parametrize("bad, passes", [(5, True), (6, False)])
def test_the_quarantine_limit_is_exact(tmp_path, bad, passes):
    """5 bad rows of 100 is at the 5% limit (1 - 95/100 is 0.05000000000000004 in floats)."""
    (tmp_path / "images").mkdir()
    for i in range(100 - bad):
        Image.fromarray(_tissue(i)).save(tmp_path / "images" / f"p{i}.png")
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"p{i},{i % 2}\n" for i in range(100)))
    result = validate_manifest(build_manifest(tmp_path, workers=1))
    assert result.counts()["quarantined"] == bad and result.passed is passes


def test_an_all_black_patch_draws_a_near_blank_warning(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(30):
        Image.fromarray(_tissue(i)).save(tmp_path / "images" / f"p{i}.png")
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "images" / "black.png")
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"p{i},{i % 2}\n" for i in range(30)) + "black,0\n")
    rows = validate_manifest(build_manifest(tmp_path, workers=1)).rows.set_index("id")
    assert (rows.at["black", "status"], rows.at["black", "reason"]) == ("warning", "near-blank patch (100% glass or black)")
    assert (rows.drop(index="black")["status"] == "ok").all()


@pytest.mark.parametrize("labels, message", [
    ([0] * 40, r"only label \['0'\] present"),
    ([1] * 39 + [0], r"label 1 is 97\.5% of usable rows"),
    ([0, 1] * 5, "only 10 usable rows"),
])
def test_data_set_problems_stop_the_run(tmp_path, labels, message):
    for i in range(len(labels)):
        Image.fromarray(_tissue(i)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(labels)))
    result = validate_manifest(build_manifest(tmp_path))
    with pytest.raises(DataValidationError, match=message):
        require_passed(result)


def test_generated_data_passes_cleanly(kaggle_root):
    result = validate_manifest(build_manifest(kaggle_root))
    assert result.passed and result.counts() == {"ok": 300}


def test_more_kinds_of_bad_image_are_quarantined(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    for i in range(40):
        Image.fromarray(_tissue(i)).save(img / f"good{i}.png")
    Image.fromarray(_tissue(200)).convert("CMYK").save(img / "cmyk.tif")
    Image.fromarray(np.full((96, 96), 40000, np.uint16)).save(img / "deep.png")  # 16-bit grey
    Image.new("1", (5000, 5000)).save(img / "bomb.png")  # 25 megapixels in a tiny file
    Image.fromarray(_tissue(201)).save(img / "orphan.png")  # no label row names it
    labels = [(f"good{i}", i % 2) for i in range(40)] + [("cmyk", 1), ("deep", 0), ("bomb", 1)]
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{lab}\n" for i, lab in labels))
    rows = validate_manifest(build_manifest(tmp_path), ValidationConfig(max_quarantine_fraction=0.5)).rows
    reason = dict(zip(rows["id"], rows["reason"]))
    status = dict(zip(rows["id"], rows["status"]))
    assert reason["cmyk"] == "image mode 'CMYK' is not 8-bit RGB"
    assert reason["deep"].startswith("image mode 'I") and reason["deep"].endswith("is not 8-bit RGB")
    assert reason["bomb"] == "refused: 5000x5000 pixels exceeds 16777216"
    assert (status["orphan"], reason["orphan"]) == ("warning", "image file has no label row; not used")


def test_a_batch_with_shifted_colours_draws_a_drift_warning(tmp_path):
    def batch(name, shift):
        folder = tmp_path / "batches" / name / "images"
        folder.mkdir(parents=True)
        for i in range(30):
            pixels = np.clip(_tissue(i).astype(int) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}{i}.png")
        (folder.parent / "labels.csv").write_text("id,label\n" + "".join(f"{name}{i},{i % 2}\n" for i in range(30)))

    batch("b1", 0)
    batch("b2", 0)
    calm = validate_manifest(build_manifest(tmp_path)).drift
    assert calm["batch"] == "b2" and not calm["warning"]
    batch("b3", [-60, 10, 40])  # a different stain
    drift = validate_manifest(build_manifest(tmp_path)).drift
    assert drift["batch"] == "b3" and drift["warning"] and drift["score"] > 1


def test_data_docs_are_written(kaggle_root, tmp_path):
    validate_manifest(build_manifest(kaggle_root), docs_dir=tmp_path / "docs")
    assert (tmp_path / "docs" / "index.html").is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 1 and "histo_data_set" in pages[0].read_text()


def test_data_docs_go_to_a_relative_folder_too(kaggle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. bench/quality.py's default --out bench-out/quality
    validate_manifest(build_manifest(kaggle_root), docs_dir=Path("out") / "docs")
    assert (tmp_path / "out" / "docs" / "index.html").is_file()


def test_validating_unchanged_data_again_reuses_the_verdict(tmp_path):
    """A second look at unchanged data costs a manifest check, not the GX suite; any
    change of a file or of a threshold validates again."""
    import shutil

    from histo_core import steps
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    data = write_kaggle_layout(tmp_path / "data", SyntheticSpec(count=120, seed=3))
    from histo_core.layout import DatasetDir

    out, manifests = tmp_path / "dataset", tmp_path / "manifests"
    dataset = DatasetDir(out)
    steps.validate(str(data), dataset, ValidationConfig(), manifests)
    shutil.rmtree(out / "data_docs")  # the GX suite would write them again
    before = (out / "validation.json").stat().st_mtime_ns
    steps.validate(str(data), dataset, ValidationConfig(), manifests)
    assert (out / "validation.json").stat().st_mtime_ns == before and not (out / "data_docs").exists()

    steps.validate(str(data), dataset, ValidationConfig(min_rows=21), manifests)  # a threshold changed
    assert (out / "data_docs").exists() and (out / "validation.json").stat().st_mtime_ns != before
    before = (out / "validation.json").stat().st_mtime_ns
    first = sorted((data / "train").iterdir())[0]
    Image.fromarray(_tissue(7)).save(first, format="TIFF")  # a file's pixels changed
    steps.validate(str(data), dataset, ValidationConfig(min_rows=21), manifests)
    assert (out / "validation.json").stat().st_mtime_ns != before


def test_a_rejected_data_set_is_rejected_again_without_revalidating(tmp_path):
    from histo_core import steps
    from histo_core.layout import DatasetDir

    (tmp_path / "data" / "images").mkdir(parents=True)
    for i in range(30):
        Image.fromarray(_tissue(i)).save(tmp_path / "data" / "images" / f"p{i}.png")
    (tmp_path / "data" / "labels.csv").write_text("id,label\n" + "".join(f"p{i},1\n" for i in range(30)))
    written = []
    for _ in range(2):
        with pytest.raises(DataValidationError, match=r"only label \['1'\] present"):
            steps.validate(str(tmp_path / "data"), DatasetDir(tmp_path / "dataset"), ValidationConfig(),
                           tmp_path / "m")
        written.append((tmp_path / "dataset" / "validation.json").stat().st_mtime_ns)
    assert written[0] == written[1]


def test_a_gx_page_made_offline_fetches_nothing_and_stays_the_same_when_made_offline_again():
    from histo_core.data_docs import offline_page

    page = ("<html><head><link rel='stylesheet' href='https://unpkg.com/bootstrap-table.min.css'>\n"
            '<link rel="shortcut icon" href="../static/images/favicon.ico"/>\n'
            "<style>.x{background:url('https://assets.example/full_logo_dark.png') 0 0}</style></head><body>"
            '<script src="https://code.jquery.com/jquery.min.js"></script>\n'
            '<script src="https://cdn.example/popper.min.js" integrity="sha384-x"\n crossorigin="anonymous"></script>'
            '<img class="NO-CACHE" src="https://assets.example/logo-long.png?d=20261126T1" alt="GX"/>'
            "<script>var kept = 1;</script><a href='https://greatexpectations.io/newsletter'>Subscribe</a>"
            "</body></html>")
    offline = offline_page(page, "../static")
    assert "unpkg.com" not in offline and "jquery" not in offline and "popper" not in offline
    assert "assets.example" not in offline and 'src="../static/images/logo-long.png"' in offline
    assert "favicon.ico" in offline and "var kept = 1" in offline  # local links and inline scripts stay
    assert "greatexpectations.io/newsletter" in offline  # a link to follow fetches nothing
    assert offline.count("<style>") == 2 and offline_page(offline, "../static") == offline
