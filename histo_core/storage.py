"""Where artifacts go: one small interface, chosen by URI.

Keys are ``/``-separated paths relative to the store root (``models/x/champion.json``).
The store never deletes: versions and run records are append-only, and the only object
ever replaced is a pointer, through ``put_json_if`` (a conditional write), so two runs
racing to promote cannot both win.

Implemented here: a local folder (a path or ``file://``). Writes go to a temporary file
and are renamed into place, so a reader never sees half an object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol
from urllib.parse import urlparse


class StoreError(RuntimeError):
    """A store operation failed; the message names the key and the reason."""


class ConflictError(StoreError):
    """A conditional write lost: the object changed since it was read."""


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Store(Protocol):
    uri: str

    def put_file(self, local: Path | str, key: str) -> str: ...
    def get_file(self, key: str, local: Path | str) -> Path: ...
    def put_json(self, key: str, data: Any) -> str: ...
    def get_json(self, key: str) -> Any: ...
    def get_json_with_etag(self, key: str) -> tuple[Any, str | None]: ...
    def put_json_if(self, key: str, data: Any, expected_etag: str | None) -> str: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


class LocalStore:
    """A folder as a store. ETags are the SHA-256 of the object's bytes."""

    LOCK_TIMEOUT_S = 30.0

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or not key:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def _write_atomic(self, data: bytes | Path, key: str) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return sha256_file(target)

    def put_file(self, local: Path | str, key: str) -> str:
        """Copy ``local`` to ``key``; returns the object's SHA-256."""
        return self._write_atomic(Path(local), key)

    def get_file(self, key: str, local: Path | str) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StoreError(f"{self.uri}/{key}: no such object")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)
        return local

    def put_json(self, key: str, data: Any) -> str:
        return self._write_atomic(_json_bytes(data), key)

    def get_json(self, key: str) -> Any:
        return self.get_json_with_etag(key)[0]

    def get_json_with_etag(self, key: str) -> tuple[Any, str | None]:
        """The object and its ETag, or (None, None) when there is none."""
        path = self._path(key)
        if not path.is_file():
            return None, None
        raw = path.read_bytes()
        return json.loads(raw), hashlib.sha256(raw).hexdigest()

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """An exclusive lock file beside ``key`` (O_EXCL is atomic on local file systems)."""
        lock = self._path(key).with_name(self._path(key).name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.LOCK_TIMEOUT_S
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{lock} held for over {self.LOCK_TIMEOUT_S:.0f}s; "
                                     "remove it if no other run is writing") from None
                time.sleep(0.05)
        try:
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)
            os.unlink(lock)

    def put_json_if(self, key: str, data: Any, expected_etag: str | None) -> str:
        """Write ``data`` only if the object's ETag is still ``expected_etag`` (None: absent)."""
        with self._lock(key):
            _, current = self.get_json_with_etag(key)
            if current != expected_etag:
                raise ConflictError(f"{self.uri}/{key} changed underneath "
                                    f"(expected ETag {expected_etag}, found {current})")
            return self.put_json(key, data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".lock"))


def open_store(uri: str) -> Store:
    """The store for ``uri``: a local path or ``file://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else uri)
    raise StoreError(f"unsupported store URI {uri!r}: use a local folder path or file:// URI")
