"""Decode each image once into a uint8 array on disk, memory-mapped by every reader.

Training reads each image many times (epochs, evaluation, two models); decoding TIFF or
JPEG every time would cost more than the model on a CPU. The cache file is named by the
hash of the rows it holds, so a changed data set gets a new cache and an unchanged one
is reused across runs.

The file is a plain ``.npy`` written block by block with ordinary writes: writing
through a memory map would keep every written page resident in the building process
(7 GiB for PCam's 262,144 training patches), while blocks of a few thousand patches
keep it near 100 MiB. Blocks are decoded in a process pool on large data sets.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from histo_core.data.images import H5_SEP, checked_stat, open_image

BLOCK = 2048  # patches per decoded block: 54 MiB at 96x96
PARALLEL_FROM = 4000  # below this many rows a process pool costs more than it saves


def cache_key(rows: pd.DataFrame) -> str:
    """Hash of the ordered pixel hashes: equal keys mean equal arrays."""
    return hashlib.sha256("\n".join(rows["pixel_sha256"]).encode()).hexdigest()[:16]


def decode_block(paths: list[str], size: int) -> np.ndarray:
    """``(len(paths), size, size, 3)`` uint8 pixels of the images at ``paths``.

    The paths come from a manifest, which recorded them resolved inside the data root;
    a file swapped for a link, or a folder for a link, since then is refused here rather
    than followed (one ``lstat`` per file, one real path per folder)."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        checked_stat(path, os.path.dirname(path.rsplit(H5_SEP, 1)[0]))
        with open_image(path) as img:
            out[i] = np.asarray(img.convert("RGB"))
    return out


def _decoded_blocks(paths: list[str], size: int, workers: int):
    """Blocks in order; at most two per worker decoded ahead, so memory stays bounded."""
    blocks = [paths[i:i + BLOCK] for i in range(0, len(paths), BLOCK)]
    if len(paths) < PARALLEL_FROM or workers <= 1:
        yield from (decode_block(b, size) for b in blocks)
        return
    # fork, as in the manifest: the workers only run PIL, numpy and h5py.
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        pending: deque[Future] = deque()
        for block in blocks:
            pending.append(pool.submit(decode_block, block, size))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def build_cache(rows: pd.DataFrame, cache_dir: Path | str, size: int = 96, workers: int | None = None) -> Path:
    """Write ``(N, size, size, 3)`` uint8 pixels for ``rows`` (in order); reuse if present."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"pixels-{cache_key(rows)}.npy"
    if target.exists():
        return target
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (len(rows), size, size, 3)}
    try:
        with open(partial, "wb") as out:
            np.lib.format.write_array_header_1_0(out, header)
            for block in _decoded_blocks(rows["path"].tolist(), size, workers or os.cpu_count() or 1):
                out.write(block.tobytes())
        os.replace(partial, target)  # readers never see a half-written cache
    finally:
        partial.unlink(missing_ok=True)  # a failed build leaves no half-gigabyte debris
    return target


def open_cache(path: Path | str) -> np.ndarray:
    """Memory-map a cache read-only."""
    return np.load(path, mmap_mode="r")
