"""Resolve a data root to a table of labelled images: ``id, label, path, batch``.

Supported layouts (detected in this order):

* ``batches/<batch-id>/`` — append-only batches, each in one of the layouts below;
  the data set is their union and every row remembers its batch;
* Kaggle — ``train_labels.csv`` (``id,label``) and ``train/<id>.tif``;
* labels CSV — ``labels.csv`` (``id,label`` and optionally ``filename`` or ``path``)
  beside the images (in the root or in ``images/``), any of .tif/.tiff/.png/.jpg;
* class folders — ``0/`` and ``1/`` holding images;
* PCam HDF5 — ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, read lazily
  (patch ids ``pcam_<split>_<index>``, as in the shared real sample).

Labels are kept as the text found in the file; ``validation`` decides what is valid.
An id that could escape the data root (absolute, ``..``, separators) gets no path, so
nothing outside the root is ever opened.
"""

from __future__ import annotations

from pathlib import Path

import os

import numpy as np
import pandas as pd

from histo_core.batch_verdicts import safe_batch_id
from histo_core.data.images import H5_SEP

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
COLUMNS = ["id", "label", "path", "batch", "labelled"]


class DataSourceError(ValueError):
    """The data root cannot be read as any supported layout."""


MAX_LABELS_BYTES = 128 << 20  # 500,000 rows of 256 bytes; Kaggle's 220,025 rows are 10 MB
MAX_LABELS_ROWS = 500_000  # Kaggle has 220,025 rows, PCam 327,680 patches in all; more go in batches
MAX_LINE_BYTES = 4096  # an id is at most 256 characters (validation); a line 16x that is no labels file


def check_labels_size(csv_path: Path) -> None:
    """Refuse a labels file that would cost more than any real one, before it is parsed:
    its size by ``stat``, then its lines and their lengths in 1 MiB reads, so a 1 GiB
    "id" or 2,000,000 rows cost a second and a few MiB, not gigabytes."""
    size = csv_path.stat().st_size
    if size > MAX_LABELS_BYTES:
        raise DataSourceError(f"{csv_path}: {size:,} bytes, more than the {MAX_LABELS_BYTES:,} a labels file may "
                              f"have ({MAX_LABELS_ROWS:,} rows at most); split it into batches")
    lines, line_start, offset = 0, 0, 0
    with open(csv_path, "rb") as f:
        while chunk := f.read(1 << 20):
            ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + offset
            starts = np.concatenate(([line_start], ends[:-1] + 1)) if len(ends) else np.array([line_start])
            longest = np.flatnonzero((ends - starts[:len(ends)]) > MAX_LINE_BYTES) if len(ends) else []
            if len(longest) or offset + len(chunk) - (ends[-1] + 1 if len(ends) else line_start) > MAX_LINE_BYTES:
                line = lines + (int(longest[0]) if len(longest) else len(ends)) + 1
                raise DataSourceError(f"{csv_path}: line {line:,} is longer than {MAX_LINE_BYTES:,} bytes; a labels "
                                      f"row is an id (at most 256 characters), a label and optionally a file name")
            lines += len(ends)
            if lines > MAX_LABELS_ROWS + 1:
                raise DataSourceError(f"{csv_path}: more than {MAX_LABELS_ROWS:,} rows; split it into batches "
                                      "(batches/<id>/) of at most that many")
            line_start = int(ends[-1]) + 1 if len(ends) else line_start
            offset += len(chunk)


def _read_labels_csv(csv_path: Path) -> pd.DataFrame:
    """Read a labels file as text, tolerating a UTF-8 BOM, CRLF and padded cells."""
    check_labels_size(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str, encoding="utf-8-sig", keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise DataSourceError(
            f"{csv_path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the labels file as UTF-8 (for example: iconv -f latin1 -t utf-8)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataSourceError(f"{csv_path}: not a readable CSV ({exc}); expected a header 'id,label'") from None
    table.columns = [c.strip() for c in table.columns]
    missing = {"id", "label"} - set(table.columns)
    if missing:
        raise DataSourceError(
            f"{csv_path}: missing column(s) {sorted(missing)}; found {list(table.columns)}. "
            "A labels file needs at least 'id' and 'label'."
        )
    return table.apply(lambda col: col.str.strip())


def _safe_child(root: Path, relative: str) -> str | None:
    """``root/relative`` if it stays inside ``root``; None for anything that could escape.

    A lexical check on strings (no absolute paths, no ``..``): resolving every file's
    real path costs a dozen system calls per image and made listing 19k files take seconds.
    """
    if not relative or relative.startswith(("/", "\\")) or ".." in relative.replace("\\", "/").split("/"):
        return None
    return os.path.join(root, relative)


MAX_NAME_BYTES = 250  # a file name is at most 255 bytes on every common file system, suffix included


def _safe_id(image_id: str) -> bool:
    """Whether ``image_id`` can name a file in its folder: not empty, no separator, not
    ``.``/``..``, short enough to be a file name (a longer one is a row with no image)."""
    return (bool(image_id) and not any(ch in image_id for ch in "/\\") and image_id not in {".", ".."}
            and len(image_id.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES)


def _find_image(folder: Path, image_id: str) -> Path:
    """The file for ``image_id`` in ``folder``; the ``.tif`` name when none exists, so the
    manifest reports it as missing by its expected name."""
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return folder / f"{image_id}.tif"


def _with_orphans(table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Add the images in ``folder`` that no label row names (reported, never trained on)."""
    named = set(table["path"])
    with os.scandir(folder) as entries:
        files = sorted(e.path for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    orphans = [f for f in files if f not in named]
    extra = pd.DataFrame({"id": [Path(p).stem for p in orphans], "label": "", "path": orphans, "labelled": False})
    return pd.concat([table.assign(labelled=True), extra], ignore_index=True)


def _kaggle(root: Path) -> pd.DataFrame:
    table = _read_labels_csv(root / "train_labels.csv")
    paths = [str(root / "train" / f"{i}.tif") if _safe_id(i) else "" for i in table["id"]]
    table = pd.DataFrame({"id": table["id"], "label": table["label"], "path": paths})
    return _with_orphans(table, root / "train") if (root / "train").is_dir() else table.assign(labelled=True)


def _labels_csv(root: Path) -> pd.DataFrame:
    table = _read_labels_csv(root / "labels.csv")
    column = next((c for c in ("filename", "path") if c in table.columns), None)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = []
    for row_id, rel in zip(table["id"], table[column] if column else table["id"]):
        if column:
            found = _safe_child(root, rel)
        else:
            found = _find_image(folder, row_id) if _safe_id(row_id) else None
        paths.append(str(found) if found else "")
    return _with_orphans(pd.DataFrame({"id": table["id"], "label": table["label"], "path": paths}), folder)


def _class_folders(root: Path) -> pd.DataFrame:
    rows = [
        {"id": f.stem, "label": label, "path": str(f)}
        for label in ("0", "1")
        for f in sorted((root / label).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return pd.DataFrame(rows, columns=["id", "label", "path"]).assign(labelled=True)


PCAM_SPLITS = ("train", "valid", "test")
PCAM_FILE = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def _pcam_h5(root: Path) -> pd.DataFrame:
    """One row per patch of every split present; only the small label files are read."""
    import h5py

    parts = []
    for split in PCAM_SPLITS:
        x_file, y_file = root / PCAM_FILE.format(split=split, xy="x"), root / PCAM_FILE.format(split=split, xy="y")
        if not y_file.is_file():
            continue
        if not x_file.is_file():
            raise DataSourceError(f"{y_file} has no images beside it: {x_file.name} is missing")
        with h5py.File(y_file, "r") as f:
            labels = np.asarray(f["y"]).reshape(-1)
        parts.append(pd.DataFrame({"id": [f"pcam_{split}_{i}" for i in range(len(labels))],
                                   "label": labels.astype(str),
                                   "path": [f"{x_file}{H5_SEP}{i}" for i in range(len(labels))]}))
    return pd.concat(parts, ignore_index=True).assign(labelled=True)


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``; raise with the list of layouts when none fits."""
    if (root / "batches").is_dir():
        return "batches"
    if (root / "train_labels.csv").is_file():
        return "kaggle"
    if (root / "labels.csv").is_file():
        return "labels_csv"
    if (root / "0").is_dir() and (root / "1").is_dir():
        return "class_folders"
    if any((root / PCAM_FILE.format(split=s, xy="y")).is_file() for s in PCAM_SPLITS):
        return "pcam_h5"
    raise DataSourceError(
        f"{root}: no supported layout found. Expected one of: batches/<batch-id>/; "
        "train_labels.csv + train/ (Kaggle); labels.csv beside the images; class folders 0/ and 1/; "
        "PCam HDF5 (camelyonpatch_level_2_split_*_{x,y}.h5)."
    )


_READERS = {"kaggle": _kaggle, "labels_csv": _labels_csv, "class_folders": _class_folders, "pcam_h5": _pcam_h5}


def list_images(root: Path | str, faults: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """All images under ``root`` as ``id, label, path, batch, labelled`` (paths absolute).

    ``labelled`` is False for image files that no label row names: validation warns about
    them and they are never trained on. With ``faults`` (a dict to fill), a batch that
    cannot be read (no layout, an unreadable labels file, an unsafe id) is recorded there
    with its reason and the other batches are listed; without it, it raises.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataSourceError(f"{root}: no such data folder")
    layout = detect_layout(root)
    if layout != "batches":
        table = _READERS[layout](root)
        table["batch"] = ""
        return table[COLUMNS]
    batches = sorted(p for p in (root / "batches").iterdir() if p.is_dir())
    if not batches:
        raise DataSourceError(f"{root / 'batches'}: holds no batch folders")
    parts = []
    for batch in batches:
        try:
            if not safe_batch_id(batch.name):
                raise DataSourceError(f"{batch}: a batch id is letters, digits and '._=+-' (at most 128)")
            table = _READERS[detect_layout(batch)](batch)
        except DataSourceError as exc:
            if faults is None:
                raise
            faults.setdefault(batch.name, []).append(str(exc))
            continue
        table["batch"] = batch.name
        parts.append(table)
    if not parts:  # every batch unreadable: no rows, each batch's reason in ``faults``
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "labelled" else str) for c in COLUMNS})
    return pd.concat(parts, ignore_index=True)[COLUMNS]
