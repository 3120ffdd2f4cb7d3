"""Where artifacts go: one small interface (``Store``), chosen by URI.

* a local folder: a path or ``file:///path``;
* S3 or an S3-compatible store: ``s3://bucket/prefix`` (credentials from the standard
  AWS chain; endpoint and region from arguments or ``AWS_ENDPOINT_URL_S3`` / ``AWS_REGION``).
"""

from __future__ import annotations

from urllib.parse import urlparse

from histo_core.config import StoreConfig
from histo_core.storage.base import ChecksumError, ConflictError, Store, StoreError, json_bytes, sha256_file
from histo_core.storage.local import LocalStore

__all__ = ["ChecksumError", "ConflictError", "LocalStore", "Store", "StoreError", "json_bytes",
           "open_store", "sha256_file"]


def open_store(uri: "str | StoreConfig", endpoint_url: str | None = None, region: str | None = None) -> Store:
    """The store for ``uri`` (or a ``StoreConfig``); ``endpoint_url``/``region`` apply to ``s3://`` only."""
    if isinstance(uri, StoreConfig):
        uri, endpoint_url, region = uri.uri, uri.endpoint_url, uri.region
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        from histo_core.storage.s3 import S3Store  # boto3 costs import time; load it when used

        return S3Store(uri, endpoint_url=endpoint_url, region=region)
    raise StoreError(f"unsupported store URI {uri!r}: use a local folder, file:///path or s3://bucket/prefix")
