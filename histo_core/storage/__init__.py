"""Where artifacts go: one small interface (``Store``), chosen by URI.

* a local folder: a path or ``file:///path``;
* S3 or an S3-compatible store: ``s3://bucket/prefix`` (credentials from the standard
  AWS chain; endpoint and region from arguments or ``AWS_ENDPOINT_URL_S3`` / ``AWS_REGION``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from urllib.parse import urlparse

from histo_core.config import StoreConfig
from histo_core.storage.base import (ChecksumError, ConflictError, CorruptObjectError, Store, StoreError,
                                     json_bytes, sha256_file)
from histo_core.storage.local import LocalStore

__all__ = ["ChecksumError", "ConflictError", "CorruptObjectError", "LocalStore", "Store", "StoreError", "json_bytes",
           "open_store", "probe_writable", "sha256_file"]


def open_store(config: "str | StoreConfig") -> Store:
    """The store a URI (or a ``StoreConfig``: endpoint, region and timeouts for ``s3://``) names."""
    config = config if isinstance(config, StoreConfig) else StoreConfig(uri=config)
    uri = config.uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        from histo_core.storage.s3 import S3Store  # boto3 costs import time; load it when used

        return S3Store(uri, endpoint_url=config.endpoint_url, region=config.region,
                       timeouts=(config.connect_timeout_s, config.read_timeout_s, config.max_attempts))
    raise StoreError(f"unsupported store URI {uri!r}: use a local folder, file:///path or s3://bucket/prefix")


def probe_writable(store: Store) -> None:
    """Write a small probe object and remove it: a store we can read but not write (a
    read-only folder or mount, an S3 policy without PutObject, a full disk) fails here,
    before a run trains for an hour and fails at promotion. Raises ``StoreError``."""
    key = f"probes/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    try:
        store.put_json(key, {"probe": "histo-retrain checks that it can write here; safe to delete",
                             "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    except StoreError as exc:
        raise StoreError(f"{store.uri} is not writable: {exc}") from None
    store.delete(key)
