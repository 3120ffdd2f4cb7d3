"""The store contract, once, on every backend a user can point the pipeline at: a local
folder, moto's S3 server and OpenStack Swift's s3api (no conditional writes: the lease).

Each backend must round-trip files and JSON with checksums, list by prefix, refuse a
stale conditional write, let exactly one of two racing promotions win, roll back, and
refuse weights changed after filing. What only one backend has (multipart uploads, a
dying endpoint, a killed local writer's debris) is tested in test_s3_store.py and
test_storage_registry.py."""

from __future__ import annotations

import threading

import pytest

from conftest import publish_version
from histo_core.registry import ChecksumError, Registry, RegistryStateError
from histo_core.storage import ConflictError, LocalStore, StoreError, sha256_file



@pytest.fixture(scope="module", params=["local", "moto", "swift"])
def backend(request, s3_endpoints):
    return None if request.param == "local" else s3_endpoints(request.param)


@pytest.fixture
def store(backend, tmp_path, monkeypatch):
    if backend is None:
        return LocalStore(tmp_path / "store")
    return backend.new_store(monkeypatch)


def _tamper(store, key: str, data: bytes, tmp_path) -> None:
    """Replace an object's bytes behind the registry's back (its recorded checksum stays)."""
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(data)
        return
    full = f"{store.prefix}/{key}"
    head = store.client.head_object(Bucket=store.bucket, Key=full)
    store.client.put_object(Bucket=store.bucket, Key=full, Body=data, Metadata=head["Metadata"])


def test_round_trip_listing_and_checksums(store, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(bytes(range(256)) * 12_000)  # 3 MB
    assert store.put_file(src, "a/b/w.bin") == sha256_file(src)
    store.put_json("a/m.json", {"x": [1, 2]})
    assert store.list("a") == ["a/b/w.bin", "a/m.json"] == store.list("a/")
    assert store.list("a/m") == [] and store.list("zz") == []
    assert store.exists("a/b/w.bin") and not store.exists("a/none")
    assert store.get_json("a/m.json") == {"x": [1, 2]} and store.get_json("a/none") is None
    assert store.get_file("a/b/w.bin", tmp_path / "out.bin").read_bytes() == src.read_bytes()
    with pytest.raises(StoreError, match="no such object"):
        store.get_file("a/none", tmp_path / "none")
    store.delete("a/m.json")
    assert store.list("a") == ["a/b/w.bin"]


def test_a_conditional_write_refuses_a_stale_etag(store):
    store.put_json_if("p.json", {"v": 1}, None)
    with pytest.raises(ConflictError, match="changed underneath"):
        store.put_json_if("p.json", {"v": 2}, None)
    _, etag = store.get_json_with_etag("p.json")
    store.put_json_if("p.json", {"v": 2}, etag)
    with pytest.raises(ConflictError):
        store.put_json_if("p.json", {"v": 3}, etag)
    assert store.get_json("p.json") == {"v": 2}


def test_of_two_concurrent_promotions_exactly_one_wins(store, tmp_path):
    registry = Registry(store, "m")
    first = publish_version(registry, tmp_path, "first")
    registry.set_champion(first, None)
    champion = registry.champion()
    contenders = [publish_version(registry, tmp_path, t) for t in ("a", "b")]
    barrier, results = threading.Barrier(2), {}

    def promote(version):
        barrier.wait()
        try:
            registry.set_champion(version, champion)
            results[version] = "won"
        except ConflictError as exc:
            results[version] = str(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in contenders]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [v for v, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    assert "champion changed underneath" in results[next(v for v in contenders if v not in winners)]
    now = registry.champion()
    assert now.version == winners[0] and now.record["history"] == [first]


def test_rollback_repoints_to_the_previous_champion(store, tmp_path):
    registry = Registry(store, "m")
    a, b = publish_version(registry, tmp_path, "a"), publish_version(registry, tmp_path, "b")
    registry.set_champion(a, None)
    registry.set_champion(b, registry.champion())
    assert registry.rollback() == (b, a)
    assert registry.champion().version == a
    with pytest.raises(ValueError, match="no earlier champion"):
        registry.rollback()


def test_weights_changed_after_filing_are_refused_and_never_written_locally(store, tmp_path):
    registry = Registry(store, "m")
    version = publish_version(registry, tmp_path, "a")
    _tamper(store, f"models/m/versions/{version}/model.pt", b"tampered", tmp_path)
    with pytest.raises(ChecksumError):
        registry.download_weights(version, tmp_path / "dl" / "model.pt")
    assert not (tmp_path / "dl" / "model.pt").exists()


def test_an_incomplete_version_cannot_become_champion_and_events_are_listed(store, tmp_path):
    registry = Registry(store, "m")
    with pytest.raises(RegistryStateError, match="no complete version"):
        registry.set_champion("v20260101T000000000000Z", None)
    version = publish_version(registry, tmp_path, "a")
    registry.record_event("promoted", version, {"why": "test"})
    assert registry.versions() == [version]
    assert any(k.endswith(f"promoted-{version}.json") for k in store.list("models/m/events"))
