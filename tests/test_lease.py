"""The timed lease (``storage.lease``) on a fake store with a fake clock: each
interleaving of two writers is written out step by step, so the outcome is deterministic
(the Swift tests race real clients; these pin down each branch)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from histo_core.storage import lease as lease_module
from histo_core.storage.base import ConflictError, StoreError
from histo_core.storage.lease import Lease


class Clock:
    """``time`` for the lease module: sleeping advances it and runs what is due then."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.during_sleep: list[Callable[[], None]] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.during_sleep:
            self.during_sleep.pop(0)()


class FakeStore:
    """Read-after-write consistent JSON objects, as the lease assumes; every call logged."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.calls: list[str] = []

    def get_json(self, key: str) -> Any:
        self.calls.append(f"get {key}")
        return self.objects.get(key)

    def put_json(self, key: str, data: Any) -> str:
        self.calls.append(f"put {key} {data.get('token', '')[:4]}")
        self.objects[key] = dict(data)
        return "etag"


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(lease_module, "time", clock)
    monkeypatch.setattr(lease_module.random, "uniform", lambda a, b: 1.0)
    return clock


def test_an_uncontended_lease_is_held_then_released(clock):
    store = FakeStore()
    with Lease(store, "p.lease", settle_s=1.0) as held:
        assert store.objects["p.lease"]["token"] == held.token and not store.objects["p.lease"]["released"]
        assert clock.now >= 1_001.0  # it waited settle_s before trusting its write
    assert store.objects["p.lease"]["released"] is True


def test_of_two_writers_that_both_saw_it_free_only_the_last_writer_holds_it(clock):
    store = FakeStore()
    first, second = Lease(store, "p.lease"), Lease(store, "p.lease")
    # While the first waits to read its token back, the second (which also saw it free) writes.
    clock.during_sleep.append(lambda: store.put_json("p.lease", {"token": second.token, "expires": clock.now + 120,
                                                                 "released": False}))
    with pytest.raises(ConflictError, match="took the lease at the same moment"):
        first.acquire()
    assert store.objects["p.lease"]["token"] == second.token  # the first did not overwrite the winner


def test_a_live_lease_of_another_writer_is_waited_for_then_refused_by_name(clock):
    store = FakeStore()
    store.objects["p.lease"] = {"token": "other", "expires": clock.now + 600, "released": False}
    with pytest.raises(StoreError, match=r"p.lease: held by another writer for 60s; .* expires by itself within 120s"):
        Lease(store, "p.lease", timeout_s=60, ttl_s=120).acquire()
    assert store.objects["p.lease"]["token"] == "other"
    assert not [c for c in store.calls if c.startswith("put")]


def test_a_lease_left_by_a_crashed_holder_expires(clock):
    store = FakeStore()
    store.objects["p.lease"] = {"token": "dead", "expires": clock.now + 30, "released": False}
    held = Lease(store, "p.lease", timeout_s=60)
    held.acquire()  # waits out the 30 s, then takes it
    assert store.objects["p.lease"]["token"] == held.token and clock.now > 1_030


def test_the_wait_adapts_to_a_slow_store(clock):
    """Three times the writer's own read-to-write step, when that is longer than settle_s:
    another writer under the same load needs as long to land its write."""
    store = FakeStore()
    slow_put = store.put_json

    def put(key: str, data: Any) -> str:
        clock.now += 2.0  # a PUT that takes 2 s
        return slow_put(key, data)

    store.put_json = put
    held = Lease(store, "p.lease", settle_s=1.0)
    start = clock.now
    held.acquire()
    assert clock.now - start == pytest.approx(2.0 + 6.0)


def test_a_writer_failing_while_it_waits_releases_its_token(clock):
    store = FakeStore()

    def interrupted() -> None:
        raise KeyboardInterrupt

    clock.during_sleep.append(interrupted)
    held = Lease(store, "p.lease")
    with pytest.raises(KeyboardInterrupt):
        held.acquire()
    assert store.objects["p.lease"] == {"token": held.token, "expires": 0, "released": True}
