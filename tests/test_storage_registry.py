import threading
from pathlib import Path

import pytest

from conftest import publish_version

from histo_core.registry import ChecksumError, Registry
from histo_core.storage import ConflictError, LocalStore, StoreError, open_store, sha256_file


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def test_round_trip_list_and_exists(store, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"x" * 3_000_000)
    assert store.put_file(src, "a/b/blob.bin") == sha256_file(src)
    store.put_json("a/meta.json", {"k": 1})
    assert store.exists("a/b/blob.bin") and not store.exists("a/none")
    assert store.list("a") == ["a/b/blob.bin", "a/meta.json"]
    assert store.get_json("a/meta.json") == {"k": 1}
    out = store.get_file("a/b/blob.bin", tmp_path / "copy.bin")
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(StoreError, match="no such object"):
        store.get_file("a/none", tmp_path / "x")


def test_keys_cannot_escape_the_store(store):
    with pytest.raises(StoreError, match="escapes the store root"):
        store.put_json("../outside.json", {})


def test_conditional_write_refuses_a_stale_etag(store):
    first = store.put_json_if("p.json", {"v": 1}, None)
    with pytest.raises(ConflictError, match="changed underneath"):
        store.put_json_if("p.json", {"v": 2}, None)
    store.put_json_if("p.json", {"v": 2}, first)
    with pytest.raises(ConflictError):
        store.put_json_if("p.json", {"v": 3}, first)
    assert store.get_json("p.json") == {"v": 2}


def test_unsupported_store_uri_is_named():
    with pytest.raises(StoreError, match="unsupported store URI 'gs://b'"):
        open_store("gs://b")


def test_only_one_of_two_concurrent_promotions_wins(store, tmp_path):
    registry = Registry(store, "m")
    versions = [publish_version(registry, tmp_path, t) for t in ("a", "b")]
    barrier, outcomes = threading.Barrier(2), []

    def promote(version):
        etag = None  # both read "no champion" before either writes
        barrier.wait()
        try:
            registry.set_champion(version, etag)
            outcomes.append("won")
        except ConflictError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes.count("won") == 1
    assert any("champion changed underneath this run" in o for o in outcomes)
    assert registry.champion().version in versions


def test_incomplete_versions_cannot_become_champion(store):
    registry = Registry(store, "m")
    with pytest.raises(StoreError, match="no complete version"):
        registry.set_champion("v-missing", None)


def test_corrupted_weights_are_refused(store, tmp_path):
    registry = Registry(store, "m")
    version = publish_version(registry, tmp_path, "a")
    stored = Path(store.root) / f"models/m/versions/{version}/model.pt"
    stored.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="corrupt and was not loaded"):
        registry.download_weights(version, tmp_path / "dl.pt")
    assert not (tmp_path / "dl.pt").exists()


def test_events_and_versions_are_listed(store, tmp_path):
    registry = Registry(store, "m")
    version = publish_version(registry, tmp_path, "a")
    registry.record_event("promoted", version, {"why": "test"})
    assert registry.versions() == [version]
    assert any(k.endswith(f"promoted-{version}.json") for k in store.list("models/m/events"))


def test_bad_model_names_are_refused(store):
    with pytest.raises(ValueError, match="model name"):
        Registry(store, "../x")
