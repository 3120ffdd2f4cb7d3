"""A season, simulated: the real retrain flow, night after night, over a scripted sequence
of good and bad batches, with nobody fixing anything between nights.

Each night adds what the script says under ``<root>/batches/`` (or changes the world:
deletes the workdir, corrupts the champion's weights in the store, runs from a second
workdir) and calls the retrain flow on Prefect's local API with the same config. The
script, repeating: two good batches; an empty night; good + corrupt (half its files
truncated); wrong-size images; 20% of labels flipped; stain-shifted good patches; a
second workdir; the workdir deleted; the champion's weights corrupted; good. Prints one
line per night (batches added and their verdicts, decision, champion, seconds, store
size) and ends with

    season: N nights, I interventions, P promotions, R bad batches isolated of B, store S MiB

The data root and the store are in S3 (a moto server started here, reached through
``AWS_ENDPOINT_URL_S3``), as in production: each new batch is uploaded, and one night
the S3 console's "Create folder" markers (``batches/``, ``batches/<id>/``) are added
too. Another night a run is killed (SIGKILL to its process group) once training has
started, and the night's scheduled run goes on from what it left. An intervention is a
night whose run did not end in a decision (an exception or a failed run): on a schedule,
a person would have had to look.

    .venv/bin/python bench/season.py [--nights 30] [--batch-rows 400] [--epochs 2]
    .venv/bin/python bench/season.py --smoke     # 2 nights on generated patches
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from histo_cli.run_commands import quiet_prefect_defaults

quiet_prefect_defaults()  # as histo retrain runs: no telemetry, 90 s for the temporary API to start

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from stain_shift import stain_shifted  # noqa: E402

from histo_core.batch_verdicts import USABLE, VerdictStore  # noqa: E402
from histo_core.config import (SMOKE_WIDTH, EvalConfig, GateConfig, OperationsConfig, RetrainConfig, StoreConfig,  # noqa: E402
                               TrainConfig)
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout  # noqa: E402
from histo_core.registry import open_registry  # noqa: E402
from histo_core.storage import open_store  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"
SCRIPT = [["good", "good"], [], ["good", "corrupt"], ["wrong-size"], ["flipped"], ["stain", "s3-markers"],
          ["second-workdir"], ["good", "delete-workdir"], ["corrupt-champion"], ["good", "killed-run"]]
# Every kind of night in two: fewer retrains, the same faults.
SMOKE_SCRIPT = [["good", "good"],
                ["good", "corrupt", "wrong-size", "s3-markers", "delete-workdir", "corrupt-champion", "killed-run"]]
WORLD = {"delete-workdir", "corrupt-champion", "second-workdir", "s3-markers", "killed-run"}  # no batch written
REPO = Path(__file__).resolve().parents[1]
BAD = {"corrupt", "wrong-size", "flipped"}


def _pool(data: Path) -> pd.DataFrame:
    labels = pd.read_csv(data / "labels.csv", dtype=str)
    labels = labels[labels["filename"].str.endswith(".jpg")]
    return pd.DataFrame({"path": [str(data / f) for f in labels["filename"]], "label": labels["label"]}) \
        .sample(frac=1.0, random_state=0).reset_index(drop=True)


def _write_batch(root: Path, batch: str, rows: pd.DataFrame, kind: str, rng: np.random.Generator) -> None:
    """One batch in the labels-CSV layout, its images written as ``kind`` says."""
    folder = root / "batches" / batch
    (folder / "images").mkdir(parents=True)
    labels = rows["label"].astype(int).to_numpy().copy()
    if kind == "flipped":
        flip = rng.choice(len(rows), len(rows) // 5, replace=False)
        labels[flip] = 1 - labels[flip]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in rows["path"]])
    if kind == "stain":
        pixels = stain_shifted(pixels, groups=1, seed=int(rng.integers(1 << 30)))
    names = []
    for i, image in enumerate(pixels):
        name = f"{batch}_{i:05d}.png"
        picture = Image.fromarray(image)
        if kind == "wrong-size":
            picture = picture.resize((64, 64))
        picture.save(folder / "images" / name)
        if kind == "corrupt" and i % 2 == 0:
            data = (folder / "images" / name).read_bytes()
            (folder / "images" / name).write_bytes(data[: len(data) // 3])
        names.append(name)
    pd.DataFrame({"id": [n[:-4] for n in names], "label": labels, "filename": [f"images/{n}" for n in names]}) \
        .to_csv(folder / "labels.csv", index=False)


def _store_mib(uri: str) -> float:
    return sum(size for _, size, _ in open_store(uri).list_objects("")) / 2**20


def _upload_batch(local_root: Path, data_uri: str, batch: str) -> None:
    """Put one batch's files under the S3 data root, as a lab's upload would."""
    bucket = open_store(data_uri)
    for path in sorted((local_root / "batches" / batch).rglob("*")):
        if path.is_file():
            bucket.put_file(path, path.relative_to(local_root).as_posix())


def _add_folder_markers(data_uri: str, batches: list[str]) -> None:
    """What the S3 console's "Create folder" writes: empty objects whose keys end in '/'."""
    from histo_core.storage.s3 import S3Store

    store = open_store(data_uri)
    assert isinstance(store, S3Store)
    for key in ["batches/"] + [f"batches/{b}/" for b in batches]:
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=b"")


def _api_url() -> str:
    """The Prefect API of this process's runs (the temporary server Prefect starts for a
    process without ``PREFECT_API_URL``): the run to kill reports to it too, as a worker's
    runs share one server, and does not spend seconds starting a server of its own."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


def _kill_a_run(config: RetrainConfig, workdir: Path) -> str:
    """Start a retrain in a process of its own and SIGKILL its process group once training
    has started (a new model folder appears): what a dying worker or an OOM kill leaves."""
    before = set((workdir / "models").glob("*/"))  # earlier nights' models
    child = subprocess.Popen([sys.executable, __file__, "--run-one", config.model_dump_json()], cwd=REPO,
                             env={**os.environ, "PREFECT_API_URL": _api_url()}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and child.poll() is None and not set((workdir / "models").glob("*/")) - before:
        time.sleep(0.2)
    if child.poll() is not None:
        return f"the run to kill ended first (exit {child.returncode})"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    return "a run killed while training"


def run(pool: pd.DataFrame, out: Path, nights: int, script: list[list[str]], batch_rows: int, epochs: int,
        width: int = TrainConfig().width) -> None:
    from prefect.exceptions import PrefectException

    from histo_flows.retrain import retrain

    root, data, store = out / "root", "s3://season-data/root", StoreConfig(uri="s3://season-store/store")
    workdirs = [out / "work1", out / "work2"]
    rng = np.random.default_rng(0)
    interventions = promotions = bad_written = 0
    bad_batches, taken, times = [], 0, []
    print(f"season: {nights} nights, batches of {batch_rows}, {epochs} epoch(s) a night", flush=True)
    for night in range(1, nights + 1):
        events = script[(night - 1) % len(script)]
        workdir = workdirs[1] if "second-workdir" in events else workdirs[0]
        added = []
        for j, kind in enumerate(events):
            if kind == "delete-workdir":
                shutil.rmtree(workdirs[0], ignore_errors=True)
            elif kind == "corrupt-champion":
                registry = open_registry(store, "pcam-cnn")
                if (champion := registry.champion()) is not None:
                    (out / "junk.pt").write_bytes(b"not a checkpoint")
                    registry.store.put_file(out / "junk.pt", f"{registry.prefix}/versions/{champion.version}/model.pt")
            elif kind == "s3-markers":
                _add_folder_markers(data, sorted(p.name for p in (root / "batches").iterdir()))
            elif kind not in WORLD:
                if taken + batch_rows > len(pool):
                    taken = 0  # the pool is reused: a later batch repeats earlier patches under new ids
                batch = f"n{night:02d}{'abcdefgh'[j]}-{kind}"
                _write_batch(root, batch, pool.iloc[taken:taken + batch_rows], kind, rng)
                _upload_batch(root, data, batch)
                taken += batch_rows
                added.append(batch)
                if kind in BAD:
                    bad_batches.append(batch)
        config = RetrainConfig(
            data=data, store=store, workdir=str(workdir), operations=OperationsConfig(lock_dir=str(out / "locks")),
            train=TrainConfig(epochs=epochs, min_epochs=1, width=width), evaluation=EvalConfig(tta=False, bootstrap=100),
            gate=GateConfig(auc_floor=0.6))
        killed = _kill_a_run(config, workdir) + "; " if "killed-run" in events else ""
        started = time.perf_counter()
        try:
            result = retrain(config)
            outcome, champion = f"{result['outcome']} {result['version']}", result["champion"]
            promotions += result["outcome"] == "promoted"
        except (PrefectException, Exception) as exc:  # noqa: BLE001 - every failure is counted, none stops it
            interventions += 1
            outcome, champion = f"FAILED ({type(exc).__name__}: {str(exc)[:160]})", "?"
        seconds = time.perf_counter() - started
        times.append(seconds)
        verdicts = VerdictStore(open_store(store), data).all()
        said = killed + ", ".join(f"{b}: {verdicts.get(b, {}).get('verdict', '-')}" for b in added) or "no new batch"
        print(f"night {night:2d} [{' '.join(events) or 'empty'}] {said}; {outcome}; champion {champion}; "
              f"{seconds:.0f} s; store {_store_mib(store.uri):.1f} MiB", flush=True)
    verdicts = VerdictStore(open_store(store), data).all()
    isolated = sum(verdicts.get(b, {}).get("verdict") not in USABLE for b in bad_batches)
    bad_written = len(bad_batches)
    print(f"season: {nights} nights, {interventions} interventions, {promotions} promotions, {isolated} bad "
          f"batches isolated of {bad_written}, store {_store_mib(store.uri):.1f} MiB; seconds per night: first "
          f"{times[0]:.0f}, last {times[-1]:.0f}")


@contextlib.contextmanager
def _s3(tmp: Path):
    """A moto S3 server for the season's data root and store, reached as a real endpoint
    (this process and the killed run's both read ``AWS_ENDPOINT_URL_S3``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3_servers import start_moto

    endpoint = start_moto(tmp)
    os.environ.update({"AWS_ENDPOINT_URL_S3": endpoint.url, "AWS_ACCESS_KEY_ID": endpoint.access_key,
                       "AWS_SECRET_ACCESS_KEY": endpoint.secret_key, "AWS_DEFAULT_REGION": "us-east-1"})
    client = endpoint.client()
    for bucket in ("season-data", "season-store"):
        client.create_bucket(Bucket=bucket)
    try:
        yield
    finally:
        endpoint.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="default: a temporary folder")
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--batch-rows", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 nights, 60-patch batches of generated data")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # the run that _kill_a_run kills
    args = parser.parse_args()
    if args.run_one:
        from histo_flows.retrain import retrain

        retrain(RetrainConfig(**json.loads(args.run_one)))
        return
    with tempfile.TemporaryDirectory(prefix="histo-season-") as tmp, _s3(Path(tmp)):
        out = args.out or Path(tmp)
        if args.smoke:
            generated = write_kaggle_layout(Path(tmp) / "generated", SyntheticSpec(count=480, seed=4))
            labels = pd.read_csv(generated / "train_labels.csv", dtype=str)
            pool = pd.DataFrame({"path": [str(generated / "train" / f"{i}.tif") for i in labels["id"]],
                                 "label": labels["label"]})
            run(pool, out, len(SMOKE_SCRIPT), SMOKE_SCRIPT, 60, 1, SMOKE_WIDTH)
        else:
            if not args.data.is_dir():
                raise SystemExit(f"no data at {args.data} (the shared real patches); --smoke runs on generated ones")
            out.mkdir(parents=True, exist_ok=True)
            run(_pool(args.data), out, args.nights, SCRIPT, args.batch_rows, args.epochs)


if __name__ == "__main__":
    main()
