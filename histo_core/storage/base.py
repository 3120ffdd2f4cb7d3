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
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def list_objects(self, prefix: str = "") -> list[tuple[str, int, str]]: ...


class ChecksumError(StoreError):
    """A file does not match the SHA-256 recorded for it."""


class CorruptObjectError(StoreError):
    """A stored JSON object is unreadable or fails its checksum. ``etag`` is the object's
    current ETag, so a repair can replace exactly that object with a conditional write."""

    def __init__(self, message: str, etag: str | None) -> None:
        super().__init__(message)
        self.etag = etag


SEAL = "_sha256"  # every JSON object the store writes carries the SHA-256 of the rest of it


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":")).encode()


def json_bytes(data: Any) -> bytes:
    """``data`` as JSON; an object gets ``_sha256``, the hash of its canonical form, so a
    changed byte or a hand edit is caught when it is read (``read_json_bytes``). It guards
    against corruption and accidental edits, not against a writer who recomputes it."""
    if isinstance(data, dict):
        body = {k: v for k, v in data.items() if k != SEAL}
        data = {**body, SEAL: hashlib.sha256(_canonical(body)).hexdigest()}
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def read_json_bytes(raw: bytes, where: str, etag: str | None) -> Any:
    """Parse and verify an object written by ``json_bytes``; objects written before seals
    existed (no ``_sha256``) are read as they are."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise CorruptObjectError(f"{where}: not valid JSON ({exc}); the object is corrupt", etag) from None
    if isinstance(data, dict) and SEAL in data:
        recorded = data.pop(SEAL)
        actual = hashlib.sha256(_canonical(data)).hexdigest()
        if recorded != actual:
            raise CorruptObjectError(f"{where}: content does not match its recorded sha256 ({recorded[:12]}... "
                                     f"recorded, {actual[:12]}... now): edited or corrupted after it was written",
                                     etag)
    return data
