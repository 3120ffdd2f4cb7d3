"""Shared files are replaced whole: a reader sees the old version or the new one, and a
failed write leaves no partial file behind."""

from __future__ import annotations

import pandas as pd
import pytest

from histo_core import steps
from histo_core.data.cache import build_cache
from histo_core.data.synthetic import render_patch
from histo_core.atomic import atomic_write


def test_a_failed_write_leaves_the_previous_file_whole_and_no_debris(tmp_path):
    target = steps._write_csv(tmp_path / "split.csv", pd.DataFrame({"id": ["a", "b"], "label": [0, 1]}))

    def half_then_fail(partial):
        partial.write_text("id,label\na,")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert pd.read_csv(target)["id"].tolist() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["split.csv"]


def test_json_and_csv_writes_replace_the_previous_version(tmp_path):
    path = steps._write_json(tmp_path / "validation.json", {"passed": False})
    steps._write_json(path, {"passed": True})
    assert path.read_text().strip().endswith("}") and '"passed": true' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["validation.json"]


def test_a_cache_build_that_fails_on_a_missing_image_leaves_no_partial_cache(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(render_patch(seed=0, index=0, label=1)).save(good)
    rows = pd.DataFrame({"path": [str(good), str(tmp_path / "gone.png")], "pixel_sha256": ["a", "b"]})
    with pytest.raises(FileNotFoundError, match="gone.png"):
        build_cache(rows, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
