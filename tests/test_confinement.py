"""Nothing outside the data root is opened, and no single file can stop a run: links
that leave the root, special files and decompression bombs each end as a quarantined
row with the reason, while the rest of the data set is validated as usual."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import tree_fingerprint
from histo_core.config import ValidationConfig
from histo_core.data.manifest import build_manifest
from histo_core.validation import validate_manifest


def _tissue(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 200, (96, 96, 3), dtype=np.uint8)


def forged_png(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header claims ``width`` x ``height`` pixels."""
    Image.fromarray(_tissue(0)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def _data_set(root: Path, count: int = 60) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(count):
        Image.fromarray(_tissue(i)).save(root / "images" / f"p{i}.png")
    return root


def _validate(root: Path, extra: dict[str, int]) -> pd.DataFrame:
    ids = [f"p{i}" for i in range(60)] + list(extra)
    labels = [i % 2 for i in range(60)] + list(extra.values())
    names = {f.stem: f.name for f in (root / "images").iterdir()}
    (root / "labels.csv").write_text("id,label,filename\n" + "".join(
        f"{i},{lab},images/{names[i]}\n" for i, lab in zip(ids, labels)))
    result = validate_manifest(build_manifest(root, workers=1), ValidationConfig(max_quarantine_fraction=0.2))
    return result.rows.set_index("id")


def test_links_out_of_the_root_and_special_files_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(_tissue(99)).save(outside / "secret.png")
    root = _data_set(tmp_path / "root")
    images = root / "images"
    (images / "out.png").symlink_to(outside / "secret.png")
    (images / "passwd.png").symlink_to("/etc/passwd")
    (images / "inside.png").symlink_to(images / "p0.png")  # a link that stays inside is fine
    os.mkfifo(images / "pipe.png")  # opening it would block the run for ever
    (images / "folder.png").mkdir()
    before = tree_fingerprint(outside)

    rows = _validate(root, {"out": 1, "passwd": 0, "inside": 1, "pipe": 0, "folder": 1})
    for name in ("out", "passwd"):
        assert rows.at[name, "status"] == "quarantined"
        assert "outside the data root" in rows.at[name, "reason"], rows.at[name, "reason"]
    for name in ("pipe", "folder"):
        assert rows.at[name, "status"] == "quarantined" and "not a regular file" in rows.at[name, "reason"]
    assert rows.at["inside", "status"] != "quarantined"
    assert rows.at["out", "pixel_sha256"] == ""  # never opened
    assert tree_fingerprint(outside) == before


def test_an_images_folder_that_is_a_link_out_of_the_root_is_refused(tmp_path):
    elsewhere = _data_set(tmp_path / "elsewhere")
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(elsewhere / "images", target_is_directory=True)
    (root / "labels.csv").write_text("id,label\n" + "".join(f"p{i},{i % 2}\n" for i in range(60)))
    rows = build_manifest(root, workers=1)
    assert (rows["error"].str.contains("outside the data root")).all()
    assert (rows["pixel_sha256"] == "").all()


@pytest.mark.parametrize("size", [20_000, 50_000])
def test_a_decompression_bomb_is_a_quarantined_row_not_a_crash(tmp_path, size):
    root = _data_set(tmp_path / "root")
    forged_png(root / "images" / "bomb.tif", size, size)  # a PNG under a .tif name
    rows = _validate(root, {"bomb": 1})
    assert rows.at["bomb", "status"] == "quarantined"
    assert rows.at["bomb", "reason"].startswith("refused") and "decompression bomb" in rows.at["bomb", "reason"]
    assert (rows.drop(index="bomb")["status"] != "quarantined").all()


def test_a_multi_page_tiff_is_refused_not_read_as_its_first_page(tmp_path):
    root = _data_set(tmp_path / "root")
    pages = [Image.fromarray(_tissue(s)) for s in (70, 71)]
    pages[0].save(root / "images" / "pages.tif", save_all=True, append_images=pages[1:])
    rows = _validate(root, {"pages": 1})
    assert rows.at["pages", "status"] == "quarantined" and "2 pages or frames" in rows.at["pages", "reason"]
