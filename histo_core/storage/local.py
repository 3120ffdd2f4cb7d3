"""A local folder as a store: atomic writes by rename, conditional writes under a lock.

The lock is an OS file lock (``filelock``: ``flock`` on Linux), which the kernel
releases when its holder dies, so a run killed inside it leaves no stale lock to
remove by hand. A write goes to a hidden temporary sibling named by host and process;
one left by a killed process of this host is removed by the next write to that folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from histo_core.storage.base import ConflictError, StoreError, json_bytes, read_json_bytes, sha256_file


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
        """Write by rename; a folder we may not write or a full disk is a ``StoreError``
        naming the path (an environment fault, exit 3), and leaves no partial file."""
        target = self._path(key)
        try:
            return self._write_whole(data, target)
        except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror} ({exc.filename})") from None
        except OSError as exc:
            if isinstance(data, Path) and not data.is_file():
                raise  # the local file to upload is missing: not the store's fault
            raise StoreError(f"cannot write {target}: {exc.strerror or exc} (a full or read-only disk?)") from None

    def _write_whole(self, data: bytes | Path, target: Path) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_debris(target.parent)
        tmp = target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            with open(tmp, "wb") as f:
                if isinstance(data, Path):
                    with open(data, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                else:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
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
        etag = hashlib.sha256(raw).hexdigest()
        return read_json_bytes(raw, f"{self.uri}/{key}", etag), etag

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """An exclusive OS lock on a file beside ``key``, released by the kernel if we die."""
        lock = self._path(key).with_name(self._path(key).name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(lock, timeout=self.LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise StoreError(f"{lock} held by another live run for over {self.LOCK_TIMEOUT_S:.0f}s") from None

    def put_json_if(self, key: str, data: Any, expected_etag: str | None) -> str:
        """Write ``data`` only if the object's ETag is still ``expected_etag`` (None: absent)."""
        with self._lock(key):
            path = self._path(key)  # compared as bytes: a corrupt object can be replaced by its ETag
            current = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            if current != expected_etag:
                raise ConflictError(f"{self.uri}/{key} changed underneath "
                                    f"(expected ETag {expected_etag}, found {current})")
            return self.put_json(key, data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove one object (absent: nothing to do) and the folders it leaves empty."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone)
                break

    def list(self, prefix: str = "") -> list[str]:
        return [key for key, _, _ in self.list_objects(prefix)]

    def list_objects(self, prefix: str = "") -> list[tuple[str, int, str]]:
        """(key, size, ETag) of every object under ``prefix``; the ETag here is size and
        mtime (cheap), which changes whenever the object is replaced."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        objects = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".lock"):
                st = p.stat()
                objects.append((p.relative_to(self.root).as_posix(), st.st_size, f"{st.st_size}-{st.st_mtime_ns}"))
        return sorted(objects)


_HOST = socket.gethostname().replace(".", "_")


def _remove_debris(folder: Path) -> None:
    """Delete partial writes left in ``folder`` by processes of this host that have died.

    Another host's partial files (a shared file system) are left alone: their writers
    cannot be checked from here."""
    for partial in folder.glob(f".*.{_HOST}.*.partial"):
        pid = partial.name.rsplit(".", 3)[-3]  # .<name>.<host>.<pid>.<thread>.partial
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
