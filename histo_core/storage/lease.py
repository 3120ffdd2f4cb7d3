"""Mutual exclusion over a store without conditional writes: a timed lease.

Some S3-compatible stores (OpenStack Swift's s3api, older Ceph) refuse ``If-Match`` /
``If-None-Match`` on PUT. On those, a pointer update runs inside a ``Lease``: Fischer's
timed mutual exclusion, which needs only read-after-write consistency (true of Swift
with one replica set and of AWS S3) and a bound on how long one PUT takes:

1. read the lease object; wait while another holder's lease is live;
2. write our own token into it, and measure how long 1 -> 2 took;
3. wait ``settle_s``, then read it back: if our token is still there, we hold the lease.

If two writers both saw the lease free, each reads back after ``settle_s`` and only the
last token written survives, so at most one proceeds. The one timing assumption, that a
step 1 -> 2 never takes longer than ``settle_s``, is checked: a writer whose write took
longer than half of ``settle_s`` gives up and retries instead of trusting the read-back.
A holder that crashes leaves a lease that expires after ``ttl_s``. Releasing writes a
"released" record (the store has no delete).
"""

from __future__ import annotations

import time
import uuid
from types import TracebackType
from typing import Any

from histo_core.storage.base import ConflictError, StoreError


class Lease:
    def __init__(self, store: Any, key: str, settle_s: float = 1.0, ttl_s: float = 120.0,
                 timeout_s: float = 60.0) -> None:
        self.store, self.key = store, key
        self.settle_s, self.ttl_s, self.timeout_s = settle_s, ttl_s, timeout_s
        self.token = uuid.uuid4().hex

    def _held_by_another(self, record: dict[str, Any] | None) -> bool:
        return (bool(record) and record.get("token") != self.token and not record.get("released")
                and record.get("expires", 0) > time.time())

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            seen_free = time.monotonic()
            if self._held_by_another(self.store.get_json(self.key)):
                time.sleep(self.settle_s / 4)
                continue
            self.store.put_json(self.key, {"token": self.token, "expires": time.time() + self.ttl_s,
                                           "released": False})
            if time.monotonic() - seen_free > self.settle_s / 2:
                time.sleep(self.settle_s)  # too slow to trust the read-back; let the others settle
                continue
            time.sleep(self.settle_s)
            record = self.store.get_json(self.key)
            if record and record.get("token") == self.token:
                return
            raise ConflictError(f"{self.key}: another writer took the lease at the same moment")
        raise StoreError(f"{self.key}: lease still held after {self.timeout_s:.0f}s; if no run is writing, "
                         f"it expires by itself within {self.ttl_s:.0f}s")

    def release(self) -> None:
        record = self.store.get_json(self.key)
        if record and record.get("token") == self.token:
            self.store.put_json(self.key, {"token": self.token, "expires": 0, "released": True})

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

