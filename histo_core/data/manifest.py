"""The manifest: one row per labelled image with what validation and training need.

Each image is opened once here, in a process pool for large data sets. Nothing is
written to the data folder: the pipeline treats inputs as read-only.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from histo_core.data import images
from histo_core.data.sources import list_images

# Refuse decompression bombs before decoding: a 96x96 patch has 9,216 pixels.
MAX_PIXELS = 4096 * 4096
BLANK_LEVEL = 220  # a pixel whose channels are all above this is background glass
DARK_LEVEL = 25  # ... and one whose channels are all below this is black (padding, a scanner fault)
PARALLEL_FROM = 4000  # below this many rows a process pool costs more than it saves

MANIFEST_COLUMNS = [
    "id", "label", "path", "batch", "labelled", "width", "height", "mode", "bytes", "mtime_ns", "pixel_sha256",
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "blank_fraction", "error",
]
NUMERIC_COLUMNS = ["width", "height", "bytes", "mtime_ns", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
                   "blank_fraction"]
# What inspecting a file yields; reused as is while the file's size and mtime are unchanged.
IMAGE_COLUMNS = ["width", "height", "mode", "pixel_sha256", "mean_r", "mean_g", "mean_b", "std_r", "std_g",
                 "std_b", "blank_fraction", "error"]


def _colour_stats(pixels: np.ndarray) -> dict[str, float]:
    """Per-channel means and standard deviations, and the background fraction of an (H, W, 3) uint8 image.

    Written for speed (this runs once per image of every data set): a float32 copy and
    a matrix-vector product instead of numpy's strided reductions over the channel axis,
    which cost ~10x more per image.
    """
    flat = pixels.reshape(-1, 3)
    values = flat.astype(np.float32)
    ones = np.ones(len(flat), np.float32)
    means = (ones @ values / len(flat)).astype(np.float64)
    stds = np.sqrt(np.maximum((ones @ (values * values) / len(flat)).astype(np.float64) - means**2, 0.0))
    bright, dark = flat > BLANK_LEVEL, flat < DARK_LEVEL
    blank = (bright[:, 0] & bright[:, 1] & bright[:, 2]) | (dark[:, 0] & dark[:, 1] & dark[:, 2])
    return {"mean_r": float(means[0]), "mean_g": float(means[1]), "mean_b": float(means[2]),
            "std_r": float(stds[0]), "std_g": float(stds[1]), "std_b": float(stds[2]),
            "blank_fraction": np.count_nonzero(blank) / len(flat)}


def inspect_image(path: str, root: str | None = None) -> dict[str, object]:
    """Open one image and describe it; failures are reported in ``error``, never raised.

    ``root``, the data root's real path, confines what may be opened (``images.checked_stat``)."""
    info: dict[str, object] = {"width": 0, "height": 0, "mode": "", "bytes": 0, "pixel_sha256": "",
                               "mean_r": np.nan, "mean_g": np.nan, "mean_b": np.nan,
                               "std_r": np.nan, "std_g": np.nan, "std_b": np.nan,
                               "blank_fraction": np.nan, "error": ""}
    if not path:
        info["error"] = "id is not a safe file name (absolute, '..' or a path separator)"
        return info
    try:
        info["bytes"] = images.checked_stat(path, root).st_size
    except PermissionError as exc:
        info["error"] = f"refused: {exc}"
        return info
    except OSError:
        info["error"] = f"no image file at {path}"
        return info
    if info["bytes"] == 0:
        info["error"] = "empty file (0 bytes)"
        return info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on a damaged file's metadata: the row's fate is decided below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with images.open_image(path) as img:
                info.update(width=img.width, height=img.height, mode=img.mode)
                if getattr(img, "n_frames", 1) > 1:
                    info["error"] = f"refused: {img.n_frames} pages or frames in one file; a patch is one image"
                    return info
                if img.width * img.height > MAX_PIXELS:
                    info["error"] = f"refused: {img.width}x{img.height} pixels exceeds {MAX_PIXELS}"
                    return info
                pixels = np.asarray(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        info["error"] = f"refused: {exc}"
        return info
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on a hostile file (TypeError, struct.error, ...)
        info["error"] = f"unreadable image: {type(exc).__name__}: {exc}"
        return info
    info["pixel_sha256"] = hashlib.sha256(pixels.tobytes()).hexdigest()
    if info["mode"] == "RGB":
        info.update(_colour_stats(pixels))
    return info


def _inspect_many(paths: list[str], root: str | None = None) -> list[dict[str, object]]:
    return [inspect_image(p, root) for p in paths]


def _file_stats(paths: list[str]) -> tuple[list[int], list[int]]:
    sizes, mtimes = [], []
    for path in paths:
        try:
            st = images.stat(path) if path else None
        except OSError:
            st = None
        sizes.append(st.st_size if st else -1)
        mtimes.append(st.st_mtime_ns if st else -1)
    return sizes, mtimes


def _inspect_all(paths: list[str], workers: int, progress: Callable[[int, int], None] | None,
                 root: str | None = None) -> list[dict]:
    if len(paths) < PARALLEL_FROM or workers == 1:
        infos: list[dict] = []
        for start in range(0, len(paths), 1000):
            infos += _inspect_many(paths[start:start + 1000], root)
            if progress:
                progress(len(infos), len(paths))
        return infos
    chunk = max(256, len(paths) // (workers * 8))
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    infos = []
    # fork: workers need no re-import of the caller's main module (spawn would run an
    # unguarded script again); they only run PIL, numpy and hashlib, which hold no
    # locks shared with the caller's threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        for part in pool.map(_inspect_many, chunks, [root] * len(chunks)):
            infos += part
            if progress:
                progress(len(infos), len(paths))
    return infos


def build_manifest(
    root: Path | str,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    previous: pd.DataFrame | None = None,
    faults: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Describe every image under ``root`` (see ``MANIFEST_COLUMNS``).

    Rows of ``previous`` (an earlier manifest) are reused for files whose path, size and
    mtime are unchanged, so only new or changed files are opened again. ``faults``: see
    ``sources.list_images`` (batches that cannot be listed, by id).
    """
    table = list_images(root, faults).reset_index(drop=True)
    table["bytes"], table["mtime_ns"] = _file_stats(table["path"].tolist())
    info = pd.DataFrame(index=table.index, columns=IMAGE_COLUMNS, dtype=object)
    todo = table["labelled"].to_numpy().copy()
    if previous is not None and len(previous):
        known = previous.drop_duplicates("path").set_index(["path", "bytes", "mtime_ns"])[IMAGE_COLUMNS]
        keys = pd.MultiIndex.from_frame(table[["path", "bytes", "mtime_ns"]])
        hit = keys.isin(known.index) & (table["path"] != "").to_numpy()
        info.loc[hit] = known.loc[keys[hit]].to_numpy()
        todo &= ~hit
    paths = table.loc[todo, "path"]
    distinct = list(dict.fromkeys(paths))  # a file named by many rows is opened once (validation refuses the rest)
    images._real_folder.cache_clear()  # a folder may have become a link since the last look
    real_root = os.path.realpath(root)  # resolved once: every opened path must stay inside it
    fresh = _inspect_all(distinct, workers or os.cpu_count() or 1, progress, real_root)
    if fresh:
        info.loc[todo] = pd.DataFrame(fresh, index=distinct)[IMAGE_COLUMNS].loc[paths].to_numpy()
    manifest = pd.concat([table, info], axis=1)
    manifest.loc[~manifest["labelled"], "error"] = ""
    manifest["bytes"] = manifest["bytes"].clip(lower=0)
    return manifest[MANIFEST_COLUMNS].infer_objects()


def manifest_hash(manifest: pd.DataFrame) -> str:
    """A content hash of the rows that matter for training (id, label, pixels)."""
    manifest = manifest[manifest["labelled"]] if "labelled" in manifest else manifest
    digest = hashlib.sha256()
    for row in manifest[["id", "label", "pixel_sha256"]].itertuples(index=False):
        digest.update("\t".join(map(str, row)).encode() + b"\n")
    return digest.hexdigest()
