import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from conftest import tree_fingerprint
from histo_core.data.manifest import build_manifest, inspect_image, manifest_hash


def test_a_good_image_is_described(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    info = inspect_image(str(tmp_path / "x.png"))
    assert (info["width"], info["height"], info["mode"], info["error"]) == (96, 96, "RGB", "")
    assert info["pixel_sha256"] == hashlib.sha256(pixels.tobytes()).hexdigest()
    assert abs(info["mean_r"] - pixels[..., 0].mean()) < 1e-4
    assert abs(info["std_b"] - pixels[..., 2].std()) < 1e-3


def test_bad_files_are_reported_not_raised(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (96, 96)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    assert inspect_image(str(tmp_path / "empty.tif"))["error"] == "empty file (0 bytes)"
    assert inspect_image(str(tmp_path / "text.png"))["error"].startswith("unreadable image")
    assert inspect_image(str(tmp_path / "truncated.png"))["error"].startswith("unreadable image")
    assert inspect_image(str(tmp_path / "missing.png"))["error"].startswith("no image file at")
    assert "not a safe file name" in inspect_image("")["error"]


def test_manifest_leaves_inputs_untouched_and_hash_follows_content(kaggle_root):
    before = tree_fingerprint(kaggle_root)
    manifest = build_manifest(kaggle_root)
    assert tree_fingerprint(kaggle_root) == before
    assert len(manifest) == 300 and (manifest["error"] == "").all()
    changed = manifest.copy()
    changed.loc[0, "label"] = "1" if changed.loc[0, "label"] == "0" else "0"
    assert manifest_hash(changed) != manifest_hash(manifest) == manifest_hash(manifest.copy())


def test_parallel_and_serial_manifests_agree(kaggle_root, monkeypatch):
    serial = build_manifest(kaggle_root, workers=1)
    monkeypatch.setattr("histo_core.data.manifest.PARALLEL_FROM", 10)
    parallel = build_manifest(kaggle_root, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_pixel_hashes_match_the_shared_data_set_record(pcam_real, tmp_path):
    labels = pd.read_csv(pcam_real / "labels.csv", dtype=str)
    sample = pd.concat([labels.head(20), labels.sample(40, random_state=0)])
    for row in sample.itertuples():
        assert inspect_image(str(pcam_real / row.filename))["pixel_sha256"] == row.pixel_sha256


def test_a_second_run_reopens_only_changed_files(kaggle_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(kaggle_root, root)
    first = build_manifest(root)
    seen = []
    again = build_manifest(root, previous=first, progress=lambda done, total: seen.append(total))
    assert seen == [] and again.equals(first)
    touched = root / "train" / f"{first.loc[5, 'id']}.tif"
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(touched)
    third = build_manifest(root, previous=first, progress=lambda done, total: seen.append(total))
    assert seen == [1]
    assert third.loc[5, "pixel_sha256"] != first.loc[5, "pixel_sha256"]
    assert third.drop(index=5)["pixel_sha256"].equals(first.drop(index=5)["pixel_sha256"])
