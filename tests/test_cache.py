"""The decoded pixel cache: the same array whether built in one process or a pool, in
blocks, and readable as a memory map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_core.data import cache
from histo_core.data.manifest import build_manifest


@pytest.fixture
def rows(kaggle_root) -> pd.DataFrame:
    return build_manifest(kaggle_root, workers=1)


def _direct(rows: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in rows["path"]])


def test_one_process_writes_every_patch_in_order(rows, tmp_path):
    pixels = cache.open_cache(cache.build_cache(rows, tmp_path, workers=1))
    assert isinstance(pixels, np.memmap) and pixels.shape == (len(rows), 96, 96, 3)
    np.testing.assert_array_equal(pixels, _direct(rows))


def test_a_pool_of_blocks_writes_the_same_array(rows, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "BLOCK", 7)  # many blocks, a last one short
    monkeypatch.setattr(cache, "PARALLEL_FROM", 1)
    pixels = cache.open_cache(cache.build_cache(rows, tmp_path, workers=2))
    np.testing.assert_array_equal(pixels, _direct(rows))


def test_a_failing_worker_fails_the_build_and_leaves_nothing(rows, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "BLOCK", 50)
    monkeypatch.setattr(cache, "PARALLEL_FROM", 1)
    broken = rows.copy()
    broken.loc[len(broken) - 1, "path"] = str(tmp_path / "gone.tif")
    with pytest.raises(FileNotFoundError, match="gone.tif"):
        cache.build_cache(broken, tmp_path / "cache", workers=2)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_file_swapped_for_a_link_after_validation_is_refused(rows, tmp_path):
    """Validated, then replaced by a link out of the data root before the cache is built."""
    outside = tmp_path / "outside.tif"
    first = rows["path"].iloc[0]
    outside.write_bytes(open(first, "rb").read())
    copy = rows.copy()
    moved = tmp_path / "moved"
    moved.mkdir()
    linked = moved / "p.tif"
    linked.symlink_to(outside)
    copy.loc[0, "path"] = str(linked)
    with pytest.raises(PermissionError, match="outside the data root"):
        cache.build_cache(copy, tmp_path / "cache", workers=1)
    assert list((tmp_path / "cache").iterdir()) == []
