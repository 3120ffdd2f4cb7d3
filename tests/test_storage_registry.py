
import pytest

from conftest import publish_version

from histo_core.registry import Registry
from histo_core.storage import LocalStore, StoreError, open_store


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def test_keys_cannot_escape_the_store(store):
    with pytest.raises(StoreError, match="escapes the store root"):
        store.put_json("../outside.json", {})


def test_unsupported_store_uri_is_named():
    with pytest.raises(StoreError, match="unsupported store URI 'gs://b'"):
        open_store("gs://b")


def test_bad_model_names_are_refused(store):
    with pytest.raises(ValueError, match="model name"):
        Registry(store, "../x")


def test_a_killed_writer_leaves_debris_that_the_next_write_removes(tmp_path):
    import socket
    import subprocess
    import sys

    store = LocalStore(tmp_path / "store")
    store.put_json("models/m/champion.json", {"version": "v1"})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = socket.gethostname().replace(".", "_")
    folder = tmp_path / "store" / "models" / "m"
    debris = folder / f".model.pt.{host}.{dead}.140000.partial"
    debris.write_bytes(b"half a model")
    foreign = folder / f".model.pt.another_host.{dead}.140000.partial"  # can't tell from here: kept
    foreign.write_bytes(b"maybe still writing")
    assert store.list("models") == ["models/m/champion.json"]  # never listed as objects
    store.put_json("models/m/events.json", [])
    assert not debris.exists() and foreign.exists()


def test_a_lock_left_by_a_killed_holder_does_not_block_the_next_promotion(tmp_path):
    """SIGKILL inside the lock: the lock file stays, the OS lock goes with the process."""
    import subprocess
    import sys

    store = LocalStore(tmp_path / "store")
    store.put_json("models/m/champion.json", {"version": "v1"})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from histo_core.storage import LocalStore; s = LocalStore(sys.argv[1]); "
        "cm = s._lock('models/m/champion.json'); cm.__enter__(); print('held', flush=True); time.sleep(60)"),
        str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(10)
    assert (tmp_path / "store" / "models" / "m" / "champion.json.lock").exists()
    _, etag = store.get_json_with_etag("models/m/champion.json")
    store.LOCK_TIMEOUT_S = 5
    store.put_json_if("models/m/champion.json", {"version": "v2"}, etag)
    assert store.get_json("models/m/champion.json") == {"version": "v2"}


def test_a_live_holder_blocks_with_a_clear_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.LOCK_TIMEOUT_S = 0.5
    with store._lock("models/m/champion.json"):
        other = LocalStore(tmp_path / "store")
        other.LOCK_TIMEOUT_S = 0.5
        with pytest.raises(StoreError, match="held by another live run"):
            other.put_json_if("models/m/champion.json", {"version": "v2"}, None)


def test_an_edited_json_object_is_refused_by_name(tmp_path):
    from histo_core.storage import CorruptObjectError

    registry = Registry(LocalStore(tmp_path / "store"), "m")
    version = publish_version(registry, tmp_path, "a")
    path = tmp_path / "store" / "models" / "m" / "versions" / version / "version.json"
    path.write_text(path.read_text().replace('"auc": 0.9', '"auc": 0.9999'))
    with pytest.raises(CorruptObjectError, match=rf"versions/{version}/version.json: content does not match"):
        registry.version(version)


def test_a_garbage_pointer_is_named_and_promote_repairs_it(tmp_path, capsys):
    from histo_cli.main import ENVIRONMENT, OK, main

    from conftest import publish_real_version

    registry = Registry(LocalStore(tmp_path / "store"), "pcam-cnn")
    a, b = publish_real_version(registry, tmp_path, 1), publish_real_version(registry, tmp_path, 2)
    registry.set_champion(a, None)
    (tmp_path / "store" / "models" / "pcam-cnn" / "champion.json").write_text("{garbage")
    store = ["--store", str(tmp_path / "store")]
    assert main(["models", "list", *store]) == ENVIRONMENT
    out = capsys.readouterr()
    assert "champion.json: not valid JSON" in out.err and "histo models promote VERSION" in out.err
    assert a in out.out and b in out.out  # the versions are still listed
    assert main(["models", "rollback", *store]) == ENVIRONMENT
    assert main(["models", "promote", b, *store]) == OK
    assert registry.champion().version == b
    assert any("-repair-" in k for k in registry.store.list("models/pcam-cnn/events"))


def test_rollback_skips_a_chain_entry_equal_to_the_champion(tmp_path):
    """A pointer written by older code, which re-promoted the champion onto itself,
    holds V in its own chain; rolling back goes to the version before, never V -> V."""
    from conftest import publish_version
    from histo_core.registry import Registry
    from histo_core.storage import LocalStore

    registry = Registry(LocalStore(tmp_path / "store"), "m")
    a, b = publish_version(registry, tmp_path, "a"), publish_version(registry, tmp_path, "b")
    registry.set_champion(a, None)
    registry.set_champion(b, registry.champion())
    current = registry.champion()
    registry.store.put_json_if("models/m/champion.json", {**current.record, "history": [a, b]}, current.etag)
    assert registry.rollback() == (b, a)
