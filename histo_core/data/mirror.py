"""Mirror an ``s3://`` data root into a local folder, by the rules of the S3 data model.

S3 has no folders: a key is any string, and ``/`` is only a convention. So a listing
can hold keys that have no file-system meaning (``batches/``, the marker the S3
console's "Create folder" writes), keys that would land outside the mirror
(``prefix//tmp/x.tif`` is ``/tmp/x.tif`` after the prefix), keys that alias another
(``labels.csv/.`` is ``labels.csv``), keys that are a file and a folder at once
(``b1`` and ``b1/x.tif``), and components longer than a file name may be. One
function, ``local_path``, maps a key to a relative path or says why it cannot; the
whole listing is planned before anything is created, and a refused key is reported by
name, rejecting its batch, without stopping the others.

The mirror follows S3: an index beside it records each object's ETag and size, so an
object changed or deleted in S3 is fetched again or removed here, with a warning
(batches are meant to be append-only, so either is news to an operator). Anything in
the mirror that the plan does not name (a deleted object, debris of an older mirror)
is removed: the mirror is the pipeline's own folder, never anyone's data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

if TYPE_CHECKING:
    from histo_core.config import StoreConfig

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


class UnsafeKeyError(ValueError):
    """An object key that cannot be a file inside the mirror; the message says why."""


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str


@dataclass
class MirrorResult:
    """What one mirroring did: the local root, and every key it refused or noticed."""

    root: Path
    refused: dict[str, str] = field(default_factory=dict)  # key -> reason
    changed: list[str] = field(default_factory=list)  # fetched again: ETag or size differ from the index
    removed: list[str] = field(default_factory=list)  # no longer in S3 (or never a planned file)
    fetched: int = 0

    def refused_batches(self) -> dict[str, list[str]]:
        """Refused keys under ``batches/<id>/``, by batch id (whose own name is safe)."""
        by_batch: dict[str, list[str]] = {}
        for key, reason in self.refused.items():
            parts = key.split("/")
            if len(parts) >= 3 and parts[0] == "batches" and _safe_component(parts[1]) is None:
                by_batch.setdefault(parts[1], []).append(f"S3 key {key!r}: {reason}")
        return by_batch


def _safe_component(part: str) -> str | None:
    """Why ``part`` cannot be one file or folder name, or None when it can."""
    if part == "":
        return "an empty path component ('//' or a leading '/') would alias or escape"
    if part in (".", ".."):
        return f"a {part!r} component would alias another key or leave the mirror"
    if "\x00" in part or "\\" in part:
        return "a NUL or backslash in a name"
    if len(part.encode()) > NAME_MAX:
        return f"a component of {len(part.encode())} bytes; a file name holds at most {NAME_MAX}"
    return None


def local_path(key: str) -> str | None:
    """The relative path of ``key`` in the mirror, or None for a key that holds no file
    (a folder marker: it ends in ``/``). Raises ``UnsafeKeyError`` with the reason."""
    if key.endswith("/"):
        return None
    for part in key.split("/"):
        if (reason := _safe_component(part)) is not None:
            raise UnsafeKeyError(reason)
    return key


def plan(objects: list[RemoteObject]) -> tuple[dict[str, RemoteObject], dict[str, str]]:
    """Files to mirror by relative path, and the refused keys with their reasons."""
    files: dict[str, RemoteObject] = {}
    refused: dict[str, str] = {}
    for obj in objects:
        try:
            path = local_path(obj.key)
        except UnsafeKeyError as exc:
            refused[obj.key] = str(exc)
            continue
        if path is not None:
            files[path] = obj
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    for path in sorted(files.keys() & folders):  # "b1" and "b1/x.tif": the folder's keys win
        refused[files.pop(path).key] = "this key is also the folder of other keys; a file cannot be both"
    return files, refused


def _index_path(target: Path) -> Path:
    return target.parent / f".{target.name}.mirror-index.json"


def _read_index(target: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads(_index_path(target).read_text())["objects"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no index (a first mirror, or one written before indexes): every file is fetched


def _write_index(target: Path, files: dict[str, RemoteObject]) -> None:
    index = _index_path(target)
    partial = index.with_name(index.name + f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"objects": {p: {"etag": o.etag, "size": o.size} for p, o in files.items()}}))
    os.replace(partial, index)


def _clear_way(target: Path, relative: str) -> None:
    """Remove what an older mirror left in the way of ``relative``: a file where a folder
    must be (a folder marker once mirrored as a file), or a folder where the file goes."""
    here = target
    for part in relative.split("/")[:-1]:
        here = here / part
        if here.exists() and not here.is_dir() or here.is_symlink():
            log.warning("mirror: removing %s, which stood where the folder of %s must be", here, relative)
            here.unlink()
    final = target / relative
    if final.is_dir() and not final.is_symlink():
        log.warning("mirror: removing the folder %s, which stood where the object %s goes", final, relative)
        shutil.rmtree(final)


def _prune(target: Path, files: dict[str, RemoteObject], known: dict[str, dict[str, object]]) -> list[str]:
    """Remove every file under ``target`` that the plan does not name; returns their paths."""
    removed = []
    if not target.is_dir():
        return removed
    for folder, _, names in os.walk(target, topdown=False):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(target).as_posix()
            if relative not in files:
                path.unlink()
                removed.append(relative)
                (log.warning if relative in known else log.info)(
                    "mirror: removed %s: %s", relative,
                    "no longer in S3" if relative in known else "not an object of the data root")
        if Path(folder) != target and not os.listdir(folder):
            os.rmdir(folder)
    return removed


def mirror_s3(uri: str, local_root: Path, store: "StoreConfig | None" = None,
              progress: Callable[[int, int], None] | None = None) -> MirrorResult:
    """Make ``local_root/<bucket>/<prefix>`` hold exactly the objects under ``uri``.

    Objects whose ETag and size match the index are not fetched again; each download is
    verified against the object's recorded SHA-256 when it has one. Goes through the store
    interface, with ``store``'s endpoint, region and timeouts: one S3 client.
    """
    from histo_core.config import StoreConfig
    from histo_core.data.sources import DataSourceError
    from histo_core.storage import open_store

    source = open_store((store or StoreConfig()).model_copy(update={"uri": uri}))
    parsed = urlparse(uri)
    target = Path(local_root) / parsed.netloc / parsed.path.strip("/")
    objects = [RemoteObject(k, size, etag) for k, size, etag in source.list_objects()]
    if not objects:
        raise DataSourceError(f"{uri}: no objects under this prefix")
    files, refused = plan(objects)
    result = MirrorResult(target, refused)
    for key, reason in refused.items():
        log.warning("mirror: refused S3 key %r under %s: %s", key, uri, reason)
    known = _read_index(target)
    result.removed = _prune(target, files, known)
    todo = []
    for relative, obj in files.items():
        seen = known.get(relative)
        if seen == {"etag": obj.etag, "size": obj.size} and (target / relative).is_file():
            continue
        if seen is not None and (target / relative).is_file():
            log.warning("mirror: %s changed in S3 (ETag or size); fetching it again. Batches are meant to be "
                        "append-only: upload a corrected batch under a new batch id", relative)
            result.changed.append(relative)
        todo.append(relative)
    for i, relative in enumerate(todo, 1):
        _clear_way(target, relative)
        source.get_file(files[relative].key, target / relative)
        if progress:
            progress(i, len(todo))
    result.fetched = len(todo)
    target.mkdir(parents=True, exist_ok=True)
    _write_index(target, files)
    return result
