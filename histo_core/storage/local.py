"""A local folder as a store: atomic writes by rename, conditional writes under a lock file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from histo_core.storage.base import ConflictError, StoreError, json_bytes, sha256_file


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
        return self._write_atomic(json_bytes(data), key)

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
