"""The S3 store and the registry on top of it, against real S3-compatible HTTP servers."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from conftest import publish_version

from histo_core.registry import Registry
from histo_core.storage import StoreError
from histo_core.storage.s3 import S3Store
from s3_servers import Endpoint



@pytest.fixture(scope="module", params=["moto", "swift"])
def endpoint(request, s3_endpoints) -> Endpoint:
    return s3_endpoints(request.param)


@pytest.fixture
def store(endpoint: Endpoint, monkeypatch) -> S3Store:
    return endpoint.new_store(monkeypatch)


def test_the_sha256_travels_as_object_metadata(store, tmp_path):
    """The contract (round trip, listing) is in test_store_contract; this is how S3 keeps it."""
    src = tmp_path / "w.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    digest = store.put_file(src, "a/w.bin")
    head = store.client.head_object(Bucket=store.bucket, Key="some/prefix/a/w.bin")
    assert head["Metadata"]["sha256"] == digest


def test_multipart_upload_of_a_large_file(store, tmp_path, caplog):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01\x02" * (20 * 1024 * 1024))  # 40 MiB: 3 parts, progress logged
    with caplog.at_level(logging.INFO, logger="histo_core.storage.s3"):
        digest = store.put_file(big, "big.bin")
    head = store.client.head_object(Bucket=store.bucket, Key="some/prefix/big.bin")
    assert "-" in head["ETag"], "a multipart upload has an ETag of the form <md5>-<parts>"
    assert head["ContentLength"] == big.stat().st_size and head["Metadata"]["sha256"] == digest
    assert "upload big.bin: 100% of 40.0 MiB" in caplog.text
    assert store.get_file("big.bin", tmp_path / "back.bin").stat().st_size == big.stat().st_size


def test_conditional_writes_are_used_where_the_store_has_them(store, endpoint):
    """moto honours If-Match / If-None-Match; Swift answers 501 and the lease takes over
    (the refusal of a stale write on both is in test_store_contract)."""
    store.put_json_if("p.json", {"v": 1}, None)
    assert store.conditional_writes is (endpoint.kind == "moto")


def test_endpoint_down_mid_version_leaves_the_champion_and_a_rerun_completes(store, endpoint, tmp_path):
    if endpoint.kind == "moto":
        pytest.skip("moto keeps objects in memory: a restart loses them, so only Swift can show the re-run")
    registry = Registry(store, "m")
    champion = publish_version(registry, tmp_path, "champion")
    registry.set_champion(champion, None)
    weights, card = tmp_path / "new.pt", tmp_path / "card.md"
    weights.write_bytes(b"w" * 100_000)
    card.write_text("card")

    class DiesAfterFirstUpload(S3Store):
        uploads = 0

        def put_file(self, local, key):
            digest = super().put_file(local, key)
            DiesAfterFirstUpload.uploads += 1
            if DiesAfterFirstUpload.uploads == 1:
                endpoint.stop()  # the real server goes away between two uploads of one version
            return digest

    dying = DiesAfterFirstUpload(store.uri, endpoint_url=endpoint.url, region="us-east-1")
    version = registry.new_version_id()
    try:
        with pytest.raises(StoreError, match=r"could not reach the endpoint http://127\.0\.0\.1:\d+ \(is it up\?\)"):
            Registry(dying, "m").publish_version(version, {"model.pt": weights, "model_card.md": card}, {})
    finally:
        endpoint.start()
    assert registry.champion().version == champion
    assert version not in registry.versions(), "a version without version.json is incomplete and invisible"
    rerun = registry.new_version_id()
    registry.publish_version(rerun, {"model.pt": weights, "model_card.md": card}, {})
    registry.set_champion(rerun, registry.champion())
    assert registry.champion().version == rerun


def test_repr_and_errors_never_show_credentials(store, endpoint, tmp_path):
    assert endpoint.secret_key not in repr(store)
    with pytest.raises(StoreError) as exc:
        store.get_file("nope", tmp_path / "x")
    assert endpoint.secret_key not in str(exc.value) and endpoint.access_key not in str(exc.value)


def test_an_s3_data_root_is_mirrored_and_validated(store, endpoint, kaggle_root, tmp_path):
    from histo_core import steps
    from histo_core.config import StoreConfig, ValidationConfig
    from histo_core.data.sources import list_images
    from histo_core.layout import DatasetDir

    files = [kaggle_root / "train_labels.csv", *sorted((kaggle_root / "train").iterdir())[:20]]
    for path in files:
        store.put_file(path, f"data/batches/b1/{path.relative_to(kaggle_root)}")
    uri = f"{store.uri}/data"
    cfg = StoreConfig(uri=store.uri, endpoint_url=endpoint.url, region="us-east-1")
    dataset = steps.validate(uri, DatasetDir(tmp_path / "run"),
                             ValidationConfig(max_quarantine_fraction=1.0, min_rows=1),
                             manifest_cache=tmp_path / "manifests", store=cfg)
    rows = steps.read_manifest(dataset.manifest)
    mirrored = tmp_path / "mirror" / store.bucket / "some/prefix/data"
    assert len(rows) == len(list_images(mirrored)) == 300
    assert (rows["status"] == "ok").sum() == 20 and rows["path"].str.startswith(str(mirrored)).all()
    assert rows.loc[rows["status"] == "quarantined", "reason"].str.startswith("no image file at").all()


def test_an_endpoint_that_never_answers_fails_in_seconds_with_the_reason(monkeypatch):
    """It accepts the connection and then says nothing: boto3's defaults wait minutes."""
    import socket
    import time

    from histo_core.config import StoreConfig
    from histo_core.storage import StoreError, open_store

    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        store = open_store(StoreConfig(uri="s3://silent/models", endpoint_url=f"http://127.0.0.1:{server.getsockname()[1]}",
                                       read_timeout_s=1, max_attempts=2))
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"s3://silent/models/.*accepted the connection but did not answer "
                                             r"within 1s \(2 tries\)"):
            store.get_json("models/pcam-cnn/champion.json")
        assert time.monotonic() - started < 10
        assert len(held) >= 1
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_the_mirror_follows_the_s3_data_model(store, endpoint, tmp_path, caplog):
    """Folder markers, keys that escape or alias, over-long names: each refused key costs
    only its batch, nothing is created outside the mirror, and the mirror follows S3."""
    from histo_core import steps
    from histo_core.config import StoreConfig, ValidationConfig
    from histo_core.data.mirror import mirror_s3
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
    from histo_core.layout import DatasetDir

    kaggle_root = write_kaggle_layout(tmp_path / "batch", SyntheticSpec(count=20, seed=4))  # min_rows
    client, base = endpoint.client(), f"{store.prefix}/data"
    files = [kaggle_root / "train_labels.csv", *sorted((kaggle_root / "train").iterdir())]
    for batch in ("b1", "b2", "b3"):
        for path in files:
            store.put_file(path, f"data/batches/{batch}/{path.relative_to(kaggle_root)}")
    escape = tmp_path / "escaped"
    odd = {f"{base}/batches/": b"", f"{base}/batches/b1/": b"",  # the console's "Create folder" markers
           f"{base}/{escape}/y.tif".replace("/data/", "/data//"): b"x",  # prefix//tmp/...: absolute after the prefix
           f"{base}/batches/b2/train_labels.csv/.": b"id,label\nattacker,1\n",  # aliases the real labels file
           f"{base}/batches/b3/{'n' * 300}.tif": b"x"}  # longer than a file name may be
    for key, body in odd.items():
        client.put_object(Bucket=store.bucket, Key=key, Body=body)
    cfg = StoreConfig(uri=store.uri, endpoint_url=endpoint.url, region="us-east-1")
    dataset = DatasetDir(tmp_path / "dataset")
    steps.validate(f"{store.uri}/data", dataset, ValidationConfig(), tmp_path / "manifests",
                   store=cfg)
    report = json.loads(dataset.validation.read_text())
    assert report["verdict"] == "passed"
    assert {b: v["verdict"] for b, v in report["batches"].items()} == {
        "b1": "accepted", "b2": "rejected", "b3": "rejected"}
    assert "would alias another key" in report["batches"]["b2"]["reasons"][0]
    assert "a file name holds at most 255" in report["batches"]["b3"]["reasons"][0]
    assert len(report["refused_keys"]) == 3 and not escape.exists()
    mirrored = tmp_path / "mirror" / store.bucket / base
    assert (mirrored / "batches/b2/train_labels.csv").read_bytes() == files[0].read_bytes()

    # The mirror follows S3: a deleted object goes, a changed one is fetched again, debris is cleared.
    gone, changed = sorted((mirrored / "batches/b1/train").iterdir())[:2]
    client.delete_object(Bucket=store.bucket, Key=f"{base}/batches/b1/train/{gone.name}")
    store.put_file(kaggle_root / "train_labels.csv", f"data/batches/b1/train/{changed.name}")
    for key in odd:
        client.delete_object(Bucket=store.bucket, Key=key)
    (mirrored / "debris.txt").write_text("left by an older mirror")
    with caplog.at_level(logging.INFO, logger="histo_core.data.mirror"):
        result = mirror_s3(f"{store.uri}/data", tmp_path / "mirror", cfg)
    assert result.refused == {} and result.changed == [f"batches/b1/train/{changed.name}"]
    assert f"batches/b1/train/{gone.name}" in result.removed and "debris.txt" in result.removed
    assert not gone.exists() and changed.read_bytes() == files[0].read_bytes()
    assert f"removed batches/b1/train/{gone.name}: no longer in S3" in caplog.text
    assert "changed in S3" in caplog.text
    assert mirror_s3(f"{store.uri}/data", tmp_path / "mirror", cfg).fetched == 0  # unchanged: nothing fetched
