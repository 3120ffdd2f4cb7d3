"""The store interface every backend implements, and helpers they share.

Keys are ``/``-separated paths relative to the store root (``models/x/champion.json``).
The interface has no delete: versions and run records are append-only, and the only
objects ever replaced are pointers, through ``put_json_if`` (a conditional write), so
two runs racing to promote cannot both win.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol


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


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


class ChecksumError(StoreError):
    """A file does not match the SHA-256 recorded for it."""
