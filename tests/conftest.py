"""Shared fixtures: tiny real-format data sets made on the fly, and the shared real data."""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

# Before Prefect is imported: the temporary API server's telemetry races its first
# migration and logs a "database is locked" traceback (see histo_cli.main).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Each pytest-xdist process gets its share of the cores (and so do the commands it starts):
# two processes each running torch on every core of a 2-core machine spin against each
# other, and the suite took far longer than its work.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from histo_core.config import SEED_CNN_WIDTH, SMOKE_WIDTH
from prefect_server import TEMPLATE_DB, start_migrating_template
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

# Shared real PCam/Kaggle patches, beside the repository; never copied into it.
PCAM_REAL = Path(os.environ.get("HISTO_PCAM_REAL", Path(__file__).resolve().parents[2] / "shared/data/pcam_real"))


_TEMPLATE = pytest.StashKey[tuple]()

# The modules that take minutes (real servers, workers, bench scripts) start first, so the
# test processes (pytest-xdist, one module per process at a time) end together. pyproject's
# --no-loadscope-reorder keeps this order: xdist's default puts the modules with the most
# tests first, and so the end-to-end modules (2 and 4 tests) last, alone at the end.
SLOW_FIRST = ("test_worker_e2e.py", "test_orchestrator_faults.py", "test_benches.py", "test_flow_retrain.py",
              "test_train.py", "test_wheel.py", "test_s3_store.py", "test_store_contract.py")


def pytest_configure(config: pytest.Config) -> None:
    """In the controlling process only (xdist's processes inherit its environment): start
    migrating the template database that the test Prefect servers copy (prefect_server)."""
    if hasattr(config, "workerinput") or os.environ.get(TEMPLATE_DB):
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="histo-test-prefect-db-"))
    os.environ[TEMPLATE_DB] = str(folder)
    config.stash[_TEMPLATE] = (folder, start_migrating_template(folder))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEMPLATE in config.stash:
        folder, migrating = config.stash[_TEMPLATE]
        if migrating.poll() is None:
            os.killpg(migrating.pid, signal.SIGKILL)
            migrating.wait()
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(TEMPLATE_DB, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


# Modules that pytest-xdist gives to one process, as if they were one file, so that the
# session fixtures they share start once there (``s3_endpoints``: Swift's start alone is
# 20 s of two cores).
SAME_PROCESS = {"tests/test_s3_store.py": "s3 endpoints", "tests/test_store_contract.py": "s3 endpoints"}
# The benches' smokes run in two interpreters (test_benches.py), one per group, and each
# group is a unit of work of its own: one interpreter running all of them was the last
# process left, alone on the machine, for a minute or more. The two that run flows share
# a group, and so one Prefect API server; three light ones join them to even the groups.
SMOKE_GROUPS = {"season.py": "flows", "flow_overhead.py": "flows", "scale.py": "flows", "learnability.py": "flows",
                "throughput.py": "flows"}


def smoke_group(bench: str) -> str:
    return SMOKE_GROUPS.get(bench, "steps")


def _work_unit(nodeid: str, file: str) -> str:
    if file == "tests/test_benches.py" and nodeid.endswith(".py]"):
        return f"{file}[{smoke_group(nodeid.rsplit('[', 1)[1][:-1])}]"
    return SAME_PROCESS.get(file, file)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadfile":
        return None  # another --dist, asked for on the command line: xdist's own
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid, super()._split_scope(nodeid))

    return FileScheduling(config, log)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """One test process more than cores (``-n auto``; pyproject caps it at 4): the end-to-end
    tests wait for a cron, a heartbeat window, a server restart, and a third process uses
    the cores meanwhile (936 s against 988 on 2 cores, the same commit)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist reads it
    return (os.cpu_count() or 1) + 1


@pytest.fixture(scope="session")
def s3_endpoints(tmp_path_factory: pytest.TempPathFactory):
    """``endpoint(kind)``: this test process's moto or Swift server (see s3_servers),
    started when first asked for and stopped at the end. Each test makes its own bucket."""
    from s3_servers import endpoint_or_skip

    started = {}

    def endpoint(kind: str):
        if kind not in started:
            started[kind] = endpoint_or_skip(kind, tmp_path_factory.mktemp(kind))
        return started[kind]

    yield endpoint
    for running in started.values():
        running.stop()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 generated patches in the Kaggle layout (read-only by convention: don't modify)."""
    return write_kaggle_layout(tmp_path_factory.mktemp("kaggle"), SyntheticSpec(count=300, seed=7))


@pytest.fixture(scope="session")
def kaggle_split(kaggle_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``kaggle_root``'s split as a retrain makes it, without the validation step (GX), for
    tests of what comes after it: training, scoring."""
    from histo_core.data.manifest import build_manifest
    from histo_core.layout import SplitDir
    from histo_core.split import assign_partitions

    rows = build_manifest(kaggle_root)
    rows["label"] = rows["label"].astype(int)
    split = SplitDir(tmp_path_factory.mktemp("split"))
    assign_partitions(rows).to_csv(split.csv, index=False)
    return split


@pytest.fixture
def pcam_real() -> Path:
    if not (PCAM_REAL / "labels.csv").is_file():
        pytest.skip(f"real PCam sample not found at {PCAM_REAL} (the shared/ folder beside the repo)")
    return PCAM_REAL


def tree_fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``: proof that inputs were not touched."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def write_weights(path: Path, seed: int = 0, model: str = "simple_cnn", width: int = SMOKE_WIDTH) -> Path:
    """A real (untrained) checkpoint of ``model``, as training writes them; narrow by
    default (SMOKE_WIDTH), as what is tested is what is done with it."""
    from histo_core.model import create_model

    torch.manual_seed(seed)
    kwargs = {"width": width} if model.startswith("simple_cnn") and width != SEED_CNN_WIDTH else {}
    torch.save({"model": create_model(model, **kwargs).state_dict(), "model_name": model, "model_kwargs": kwargs},
               path)
    return path


def publish_real_version(registry, folder: Path, seed: int) -> str:
    """File a version whose weights load as their recorded architecture."""
    version = registry.new_version_id()
    registry.publish_version(version, {"model.pt": write_weights(folder / f"w{seed}.pt", seed)}, {"metrics": {}})
    return version


def publish_version(registry, folder: Path, tag: str, size: int = 5000) -> str:
    """File a small stand-in version (the registry never looks inside the weights)."""
    weights = folder / f"{tag}.pt"
    weights.write_bytes(tag.encode() * size)
    version = registry.new_version_id()
    registry.publish_version(version, {"model.pt": weights}, {"metrics": {"auc": 0.9}})
    return version


@pytest.fixture(scope="session")
def installed_env(tmp_path_factory: pytest.TempPathFactory):
    """The wheel of this checkout installed into a new environment (see installed.py),
    built once per pytest run: the test processes of pytest-xdist share it."""
    from filelock import FileLock

    from installed import InstalledEnv, make_installed_env

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make_installed_env(tmp_path_factory.mktemp("installed"))
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, holding each xdist process's own
    folder = shared / "installed"
    with FileLock(shared / "installed.lock"):
        if not (folder / "ready").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            env = make_installed_env(folder)
            (folder / "ready").write_text(str(env.wheel))
    return InstalledEnv(folder / "venv", Path((folder / "ready").read_text()))
