"""Thousands of malformed inputs, made by seeded mutations of real files, through the
manifest (every image opened), the source readers (labels files, PCam HDF5) and the cache.

Each must end as a row with a reason or as one of our clean errors, never as another
exception, and no input file may change. The mutations are seeded: a failure names the
case, which reproduces exactly.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import PCAM_REAL, tree_fingerprint
from histo_core.config import SMOKE_WIDTH
from histo_core.data.manifest import build_manifest, inspect_image
from histo_core.data.sources import DataSourceError, list_images

FORMATS = ["PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP", "PPM", "TGA", "ICO", "PCX", "SGI", "DDS", "QOI"]
MODES = ["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK", "F", "I", "LA"]


def _seed_images(rng: random.Random) -> list[bytes]:
    """Valid files in every format PIL writes here, from real patches when the shared data is there."""
    if (PCAM_REAL / "labels.csv").is_file():
        files = sorted((PCAM_REAL / "images").iterdir())[:6]
        bases = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    else:
        bases = [np.random.default_rng(s).integers(40, 220, (96, 96, 3), dtype=np.uint8) for s in range(6)]
    out = []
    for fmt in FORMATS:
        for mode in MODES:
            image = Image.fromarray(rng.choice(bases))
            try:
                converted = image.convert(mode)
                buffer = io.BytesIO()
                converted.save(buffer, format=fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # this format cannot hold this mode
            out.append(buffer.getvalue())
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    data = bytearray(data)
    if kind == 0:  # truncated anywhere
        return bytes(data[:rng.randrange(len(data))])
    if kind == 1:  # flipped bytes, mostly in the header
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(data), 256) if rng.random() < 0.7 else len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # forged sizes: any 4-byte field near the start set to a huge or zero number
        i = rng.randrange(0, max(1, min(len(data) - 4, 64)))
        data[i:i + 4] = struct.pack(rng.choice([">I", "<I"]), rng.choice([0, 1, 65535, 50000, 2**31 - 1]))
        return bytes(data)
    if kind == 3:  # a forged PNG header on other bytes
        ihdr = struct.pack(">IIBBBBB", rng.choice([96, 20000, 50000]), rng.choice([96, 50000]), 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + bytes(
            data[rng.randrange(len(data)):])
    if kind == 4:  # random bytes of a plausible length
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
    return bytes(data) * rng.randint(2, 3)  # concatenated copies


def test_thousands_of_mutated_images_each_end_as_a_reason_or_a_clean_row(tmp_path):
    rng = random.Random(20261126)
    seeds = _seed_images(rng)
    assert len(seeds) > 40  # many format/mode pairs, so the cases cover what PIL opens
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    cases = 0
    for i, seed in enumerate(seeds):
        for j in range(40):
            data = _mutate(seed, rng)
            path = root / "images" / f"c{i:03d}_{j:02d}.{rng.choice(['tif', 'png', 'jpg'])}"
            path.write_bytes(data)
            cases += 1
    before = tree_fingerprint(root)
    for path in sorted((root / "images").iterdir()):
        info = inspect_image(str(path), str(root.resolve()))  # raises: the test fails with the case's name
        assert info["error"] or (info["width"] > 0 and info["pixel_sha256"]), path.name
    assert tree_fingerprint(root) == before
    assert cases >= 2000


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252", "utf-32"])
def test_labels_files_in_odd_encodings_read_or_fail_cleanly(tmp_path, encoding):
    rng = random.Random(encoding)
    for case in range(25):
        folder = tmp_path / f"{encoding}-{case}"
        (folder / "images").mkdir(parents=True)
        Image.fromarray(np.full((96, 96, 3), 120, np.uint8)).save(folder / "images" / "a.png")
        ids = ["a", "caf\u00e9", "\u00fcber", "x,y", '"q"', " a ", "", "../a", "\u4e2d"]
        rows = "\r\n" if rng.random() < 0.5 else "\n"
        text = "id,label" + rows + rows.join(f"{rng.choice(ids)},{rng.choice(['0', '1', '2', '', 'x'])}"
                                            for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.3:
            text = text[:rng.randrange(len(text) + 1)]
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:
            continue
        (folder / "labels.csv").write_bytes(raw)
        before = tree_fingerprint(folder)
        try:
            build_manifest(folder, workers=1)
        except DataSourceError as exc:
            assert "labels.csv" in str(exc), exc
        assert tree_fingerprint(folder) == before


@pytest.mark.parametrize("x_shape, x_dtype, y_shape", [
    ((4, 96, 96, 3), np.uint8, (4, 1, 1, 1)),   # the real layout
    ((4, 96, 96, 3), np.float32, (4, 1, 1, 1)),  # floats, not bytes
    ((4, 96, 96), np.uint8, (4,)),               # no channels
    ((4, 32, 32, 3), np.uint8, (4, 1, 1, 1)),    # wrong size
    ((2, 96, 96, 3), np.uint8, (4, 1, 1, 1)),    # fewer images than labels
    ((4, 96, 96, 3), np.int64, (4, 1, 1, 1)),
    ((4, 96, 96, 4), np.uint8, (4, 1, 1, 1)),    # RGBA
])
def test_pcam_files_with_wrong_shapes_and_dtypes_end_as_rows_with_reasons(tmp_path, x_shape, x_dtype, y_shape):
    import h5py

    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=np.random.default_rng(0).integers(0, 255, x_shape).astype(x_dtype))
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f.create_dataset("y", data=(np.arange(int(np.prod(y_shape))) % 2).reshape(y_shape).astype(np.uint8))
    before = tree_fingerprint(tmp_path)
    rows = build_manifest(tmp_path, workers=1)
    good = (x_shape[1:] == (96, 96, 3)) and x_dtype == np.uint8
    assert len(rows) == len(list_images(tmp_path))
    if good and x_shape[0] == y_shape[0]:
        assert (rows["error"] == "").all()
    else:
        assert (rows["error"] != "").any() or (rows["width"] != 96).any() or (rows["mode"] != "RGB").any()
    assert tree_fingerprint(tmp_path) == before


def test_predict_scores_or_names_every_mutated_file_and_opens_nothing_outside(tmp_path):
    import os

    import pandas as pd
    import torch

    from histo_core.model import create_model
    from histo_core.predict import predict_folder

    checkpoint = tmp_path / "model.pt"
    torch.save({"model": create_model("simple_cnn", dropout=0.5, width=SMOKE_WIDTH).state_dict(),
                "model_name": "simple_cnn", "model_kwargs": {"dropout": 0.5, "width": SMOKE_WIDTH}}, checkpoint)
    rng = random.Random(7)
    folder = tmp_path / "to-score"
    folder.mkdir()
    seeds = _seed_images(rng)
    for i in range(300):
        (folder / f"m{i:03d}.{rng.choice(['tif', 'png', 'jpg'])}").write_bytes(_mutate(rng.choice(seeds), rng))
    Image.fromarray(np.full((96, 96, 3), 150, np.uint8)).save(folder / "good.png")
    (tmp_path / "outside.png").write_bytes((folder / "good.png").read_bytes())
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(folder / "pipe.png")
    before = tree_fingerprint(folder)

    result = predict_folder(checkpoint, folder, tmp_path / "preds.csv", device="cpu")
    scored = pd.read_csv(result.csv, keep_default_na=False, dtype={"id": str}).set_index("id")
    errors = pd.read_csv(result.errors_csv, keep_default_na=False, dtype={"id": str, "error": str}).set_index("id")
    assert list(scored.columns) == ["label"] and list(errors.columns) == ["error"]
    assert len(scored) + len(errors) == 303 == result.scored + result.failed
    assert not set(scored.index) & set(errors.index) and (errors["error"] != "").all()
    assert "good" in scored.index and 0 <= float(scored.at["good", "label"]) <= 1
    assert "outside the data root" in errors.at["link", "error"] and "not a regular file" in errors.at["pipe", "error"]
    assert scored["label"].astype(float).between(0, 1).all()
    assert tree_fingerprint(folder) == before


def test_evaluate_scores_the_readable_rows_and_counts_the_rest(tmp_path, capfd):
    """The command (``histo evaluate``, called here: its own process would add only its
    imports): 200 mutated files, a link out and a pipe among 40 good patches; it exits 0,
    scores the good ones and reports the others as unreadable."""
    import json
    import os

    import torch

    from histo_cli.main import main
    from histo_core.model import create_model

    checkpoint = tmp_path / "model.pt"
    torch.save({"model": create_model("simple_cnn", dropout=0.5, width=SMOKE_WIDTH).state_dict(),
                "model_name": "simple_cnn", "model_kwargs": {"dropout": 0.5, "width": SMOKE_WIDTH}}, checkpoint)
    rng = random.Random(11)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(40, 220, (96, 96, 3), dtype=np.uint8)).save(
            data / "images" / f"g{i}.png")
        rows.append(f"g{i},{i % 2},images/g{i}.png")
    seeds = _seed_images(rng)
    for i in range(200):
        name = f"m{i}.{rng.choice(['tif', 'png', 'jpg'])}"
        (data / "images" / name).write_bytes(_mutate(rng.choice(seeds), rng))
        rows.append(f"m{i},{i % 2},images/{name}")
    (tmp_path / "outside.png").write_bytes((data / "images" / "g0.png").read_bytes())
    (data / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(data / "images" / "pipe.png")
    rows += ["link,1,images/link.png", "pipe,0,images/pipe.png"]
    (data / "labels.csv").write_text("id,label,filename\n" + "\n".join(rows) + "\n")
    before = tree_fingerprint(data)

    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--no-tta",
                 "--json", str(tmp_path / "m.json")])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] + metrics["unreadable"] == 242 and metrics["n"] >= 40 and metrics["unreadable"] >= 2
    assert "Traceback" not in err
    assert tree_fingerprint(data) == before
