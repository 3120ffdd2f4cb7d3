"""Mutual exclusion over a store without conditional writes: a timed lease.

Some S3-compatible stores (OpenStack Swift's s3api, older Ceph) refuse ``If-Match`` /
``If-None-Match`` on PUT. On those, a pointer update runs inside a ``Lease``: Fischer's
timed mutual exclusion, which needs only read-after-write consistency (true of Swift
with one replica set and of AWS S3) and a bound on how long one PUT takes:

1. read the lease object; wait while another holder's lease is live;
2. write our own token into it, and measure how long 1 -> 2 took;
3. wait, then read it back: if our token is still there, we hold the lease.

If two writers both saw the lease free, each reads back after its wait and only the
last token written survives, so at most one proceeds, provided the wait outlasts any
other writer's step 1 -> 2. That step is slow on a loaded store, so the wait adapts:
``settle_s``, or three times our own step when that is longer (writers under the same
load take similar times). Giving up when the own step was slow, as an earlier version
did, let two slow writers retry each other out until neither won. A holder that crashes
leaves a lease that expires after ``ttl_s``; a writer that fails while waiting releases
its token. Releasing writes a "released" record (the store has no delete).
"""

from __future__ import annotations

import random
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
                time.sleep(self.settle_s / 4 * random.uniform(0.5, 1.5))  # jitter: waiters don't move in step
                continue
            self.store.put_json(self.key, {"token": self.token, "expires": time.time() + self.ttl_s,
                                           "released": False})
            try:
                time.sleep(max(self.settle_s, 3 * (time.monotonic() - seen_free)))
                record = self.store.get_json(self.key)
            except BaseException:
                self._release_quietly()  # don't leave a live token behind for ttl_s
                raise
            if record and record.get("token") == self.token:
                return
            raise ConflictError(f"{self.key}: another writer took the lease at the same moment")
        raise StoreError(f"{self.key}: held by another writer for {self.timeout_s:.0f}s; if no run is writing, "
                         f"it expires by itself within {self.ttl_s:.0f}s")

    def release(self) -> None:
        record = self.store.get_json(self.key)
        if record and record.get("token") == self.token:
            self.store.put_json(self.key, {"token": self.token, "expires": 0, "released": True})

    def _release_quietly(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - the store is failing already; the lease expires by itself
            pass

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

