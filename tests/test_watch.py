"""The watcher: which batches count as arrived (locally and on S3), and two watchers
claiming the same batches announce them once."""

from __future__ import annotations

from pathlib import Path


from histo_core.config import StoreConfig
from histo_core.storage import LocalStore
from histo_core.watch import claim_new_batches, list_ready_batches
from s3_servers import endpoint_or_skip

# Each batch: its files, and whether its labels have arrived.
BATCHES = {
    "kaggle-csv": (["train/a.tif", "train_labels.csv"], True),
    "labels-csv": (["images/a.png", "labels.csv"], True),
    "class-folders": (["0/a.png", "1/b.png"], True),
    "pcam": (["camelyonpatch_level_2_split_train_x.h5", "camelyonpatch_level_2_split_train_y.h5"], True),
    "images-only": (["train/a.tif", "train/b.tif"], False),
    "one-class-folder": (["0/a.png"], False),
    "pcam-without-labels": (["camelyonpatch_level_2_split_train_x.h5"], False),
}
READY = sorted(name for name, (_, ready) in BATCHES.items() if ready)


def _write_batches(root: Path) -> None:
    for batch, (files, _) in BATCHES.items():
        for name in files:
            path = root / "batches" / batch / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("id,label\na,1\n" if name.endswith(".csv") else "x")


def test_local_batches_count_once_their_labels_are_there(tmp_path):
    _write_batches(tmp_path / "data")
    assert list_ready_batches(str(tmp_path / "data")) == READY


def test_s3_batches_follow_the_same_readiness_rules(tmp_path, monkeypatch):
    endpoint = endpoint_or_skip("moto", tmp_path)
    try:
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        endpoint.client().create_bucket(Bucket="incoming")
        _write_batches(tmp_path / "data")
        client = endpoint.client()
        for path in sorted((tmp_path / "data").rglob("*")):
            if path.is_file():
                client.upload_file(str(path), "incoming", f"pcam/{path.relative_to(tmp_path / 'data').as_posix()}")
        store = StoreConfig(uri="s3://incoming", endpoint_url=endpoint.url, region="us-east-1")
        assert list_ready_batches("s3://incoming/pcam", store) == READY
    finally:
        endpoint.stop()


class _RivalClaimsFirst(LocalStore):
    """A store where another watcher claims the batches between this watcher's read of
    the record and its conditional write: the race two watchers on one root can run."""

    def __init__(self, root: Path, rival: callable) -> None:
        super().__init__(root)
        self.rival = rival

    def get_json_with_etag(self, key: str):
        found = super().get_json_with_etag(key)
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        return found


def test_two_watchers_claiming_at_once_announce_each_batch_once(tmp_path):
    _write_batches(tmp_path / "data")
    data, claims = str(tmp_path / "data"), {}

    def rival() -> None:
        claims["rival"] = claim_new_batches(data, LocalStore(tmp_path / "state"))

    claims["late"] = claim_new_batches(data, _RivalClaimsFirst(tmp_path / "state", rival))
    assert claims == {"rival": READY, "late": []}
    assert claim_new_batches(data, LocalStore(tmp_path / "state")) == []  # all seen now

    (tmp_path / "data" / "batches" / "images-only" / "train_labels.csv").write_text("id,label\na,1\n")
    assert claim_new_batches(data, LocalStore(tmp_path / "state")) == ["images-only"]


def test_the_watchers_flow_loads_without_torch():
    """A watcher runs every few minutes in a process of its own; torch would cost it
    seconds of CPU each time for nothing."""
    import subprocess
    import sys

    probe = "import sys, histo_flows.watch; print(sorted({'torch', 'torchvision', 'great_expectations'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
