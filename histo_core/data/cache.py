"""Decode each image once into a uint8 array on disk, memory-mapped by every reader.

Training reads each image many times (epochs, evaluation, two models); decoding TIFF or
JPEG every time would cost more than the model on a CPU. The cache file is named by the
hash of the rows it holds, so a changed data set gets a new cache and an unchanged one
is reused across runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from histo_core.data.images import open_image


def cache_key(rows: pd.DataFrame) -> str:
    """Hash of the ordered pixel hashes: equal keys mean equal arrays."""
    return hashlib.sha256("\n".join(rows["pixel_sha256"]).encode()).hexdigest()[:16]


def build_cache(rows: pd.DataFrame, cache_dir: Path | str, size: int = 96) -> Path:
    """Write ``(N, size, size, 3)`` uint8 pixels for ``rows`` (in order); reuse if present."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"pixels-{cache_key(rows)}.npy"
    if target.exists():
        return target
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3))
        for i, path in enumerate(rows["path"]):
            with open_image(path) as img:
                array[i] = np.asarray(img.convert("RGB"))
        array.flush()
        del array
        os.replace(partial, target)  # readers never see a half-written cache
    finally:
        partial.unlink(missing_ok=True)  # a failed build leaves no half-gigabyte debris
    return target


def open_cache(path: Path | str) -> np.ndarray:
    """Memory-map a cache read-only."""
    return np.load(path, mmap_mode="r")
