"""Retention (histo_core.retention, ``histo store gc``): the champion, every former
champion and the newest N versions stay; other versions, failed uploads older than a day
and (opt-in) old run records go; ``--dry-run`` changes nothing. On a local store and on
a real S3 endpoint (moto)."""

from __future__ import annotations

import datetime as dt

import pytest

from conftest import publish_version
from histo_cli.main import main
from histo_core.registry import Registry
from histo_core.storage import LocalStore
from histo_core.storage.s3 import S3Store
from s3_servers import start_moto


@pytest.fixture(params=["local", "moto"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalStore(tmp_path / "store"), ["--store", str(tmp_path / "store")]
        return
    moto = start_moto(tmp_path)
    moto.client().create_bucket(Bucket="models")
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield S3Store("s3://models/pcam", endpoint_url=moto.url), ["--store", "s3://models/pcam",
                                                                   "--endpoint-url", moto.url]
    finally:
        moto.stop()


def _season(store, tmp_path) -> dict[str, list[str]]:
    registry = Registry(store, "pcam-cnn")
    versions = [publish_version(registry, tmp_path, f"w{i}") for i in range(7)]
    registry.set_champion(versions[1], None)
    registry.set_champion(versions[3], registry.champion())
    old_failure = "v20240101T000000000000Z"  # an upload that died before its version.json
    (tmp_path / "partial.pt").write_bytes(b"x" * 100)
    store.put_file(tmp_path / "partial.pt", f"models/pcam-cnn/versions/{old_failure}/model.pt")
    uploading = registry.new_version_id()  # a run uploading right now
    store.put_file(tmp_path / "partial.pt", f"models/pcam-cnn/versions/{uploading}/model.pt")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for run_id in ("20240101T000000Z-old-night", f"{stamp}-last-night"):
        store.put_json(f"runs/{run_id}/decision.json", {"outcome": "rejected"})
    return {"versions": versions, "failure": [old_failure], "uploading": [uploading]}


def test_gc_keeps_champions_and_the_newest_and_removes_the_rest(store, tmp_path, capsys):
    store, options = store
    season = _season(store, tmp_path)
    v = season["versions"]
    before = store.list("")
    assert main(["store", "gc", "--keep-last", "2", "--runs-older-than", "30", "--dry-run", *options]) == 0
    out = capsys.readouterr().out
    assert store.list("") == before  # a dry run changes nothing
    for version in (v[0], v[2], v[4]):
        assert f"would remove  version {version}" in out
    assert f"would remove  incomplete version {season['failure'][0]}" in out
    assert "would remove  run 20240101T000000Z-old-night" in out
    assert f"keep    {v[3]}  (champion)" in out and f"keep    {v[1]}  (former champion)" in out

    assert main(["store", "gc", "--keep-last", "2", "--runs-older-than", "30", *options]) == 0
    registry = Registry(store, "pcam-cnn")
    assert registry.versions() == [v[1], v[3], v[5], v[6]]
    assert all(registry.verify(version) == [] for version in registry.versions())
    left = store.list("")
    assert not any(season["failure"][0] in key or "old-night" in key for key in left)
    assert any(season["uploading"][0] in key for key in left)  # may still be uploading: kept
    assert any("last-night" in key for key in left)
    assert registry.rollback() == (v[3], v[1])  # the former champion is still there to go back to


def test_run_records_are_kept_unless_asked(tmp_path, capsys):
    store = LocalStore(tmp_path / "store")
    _season(store, tmp_path)
    assert main(["store", "gc", "--store", str(tmp_path / "store")]) == 0
    assert any("old-night" in key for key in store.list("runs"))
    assert main(["store", "gc", "--keep-last", "0", "--store", str(tmp_path / "store")]) == 2
