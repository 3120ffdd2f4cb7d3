"""PCam's HDF5 layout, read lazily, on tiny files in the real format made here."""

import h5py
import numpy as np

from histo_core.data.cache import build_cache, open_cache
from histo_core.data.manifest import build_manifest
from histo_core.data.sources import detect_layout, list_images


def _write_split(root, split, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8)
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=y)
    return x, y.reshape(-1)


def test_pcam_h5_rows_manifest_and_cache(tmp_path):
    x_train, y_train = _write_split(tmp_path, "train", 12, 0)
    x_valid, y_valid = _write_split(tmp_path, "valid", 5, 1)
    assert detect_layout(tmp_path) == "pcam_h5"
    table = list_images(tmp_path)
    assert table["id"].tolist()[:2] == ["pcam_train_0", "pcam_train_1"] and len(table) == 17
    assert table["label"].tolist() == [str(v) for v in [*y_train, *y_valid]]
    manifest = build_manifest(tmp_path)
    assert (manifest["error"] == "").all() and (manifest["mode"] == "RGB").all()
    pixels = open_cache(build_cache(manifest, tmp_path / "cache"))
    assert np.array_equal(pixels[3], x_train[3]) and np.array_equal(pixels[12 + 4], x_valid[4])


def test_labels_without_images_are_an_error(tmp_path):
    _write_split(tmp_path, "test", 3, 2)
    (tmp_path / "camelyonpatch_level_2_split_test_x.h5").unlink()
    import pytest

    from histo_core.data.sources import DataSourceError

    with pytest.raises(DataSourceError, match="camelyonpatch_level_2_split_test_x.h5 is missing"):
        list_images(tmp_path)
