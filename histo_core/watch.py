"""Notice new batches under a data root, and remember which ones were already seen.

A batch is ``<root>/batches/<batch-id>/`` and counts as *arrived* once its labels are
there (``train_labels.csv``, ``labels.csv``, class folders ``0/`` and ``1/``, or PCam
label files): uploaders write labels last, so a half-uploaded batch is not retrained on.
What was seen is kept in the store (``watch/<root-hash>.json``) and updated with a
conditional write, so two watchers never announce the same batch twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

from histo_core.config import StoreConfig
from histo_core.data.sources import DataSourceError, detect_layout
from histo_core.storage import ConflictError, Store, open_store

LABEL_FILES = ("train_labels.csv", "labels.csv")


def _local_batches(root: Path) -> list[str]:
    folder = root / "batches"
    if not folder.is_dir():
        return []
    ready = []
    for batch in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            detect_layout(batch)
            ready.append(batch.name)
        except DataSourceError:
            continue  # still uploading: no labels yet
    return ready


def _s3_batches(uri: str, store: StoreConfig) -> list[str]:
    keys = open_store(store.model_copy(update={"uri": uri})).list("batches")
    files: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3:
            files.setdefault(parts[1], set()).add("/".join(parts[2:]))
    ready = []
    for batch, names in sorted(files.items()):
        has_labels = any(n in names for n in LABEL_FILES)
        has_classes = any(n.startswith("0/") for n in names) and any(n.startswith("1/") for n in names)
        has_pcam = any(n.startswith("camelyonpatch_") and n.endswith("_y.h5") for n in names)
        if has_labels or has_classes or has_pcam:
            ready.append(batch)
    return ready


def list_ready_batches(data: str, store: StoreConfig | None = None) -> list[str]:
    """Ids of the batches under ``data`` whose labels have arrived."""
    if urlparse(data).scheme == "s3":
        return _s3_batches(data, store or StoreConfig())
    return _local_batches(Path(data))


def batch_uri(data: str, batch: str) -> str:
    return f"{data.rstrip('/')}/batches/{batch}"


def claim_new_batches(data: str, state: Store, store: StoreConfig | None = None) -> list[str]:
    """Batches not seen before, now marked as seen; [] if another watcher claimed them first."""
    key = f"watch/{hashlib.sha256(data.encode()).hexdigest()[:16]}.json"
    record, etag = state.get_json_with_etag(key)
    seen = set(record["batches"]) if record else set()
    new = [b for b in list_ready_batches(data, store) if b not in seen]
    if not new:
        return []
    try:
        state.put_json_if(key, {"data": data, "batches": sorted(seen | set(new))}, etag)
    except ConflictError:
        return []  # a concurrent watcher recorded (and announces) them
    return new
