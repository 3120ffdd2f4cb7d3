"""Promotion races on every store backend: exactly one winner, never an incomplete champion.

Each trial files a few complete versions and one incomplete one (weights, no
``version.json``), then starts 2 (or 4) promoters at the same instant, each moving the
champion from the same starting version to its own contender with a conditional write
(``Registry.set_champion``); one promoter in each trial aims at the incomplete version,
which must always be refused. It prints, per backend and number of promoters:

    trials | single winners | no-winner trials | pointer on an incomplete version | hangs > 30 s

The local store and moto's S3 server always run; OpenStack Swift (whose s3api refuses
conditional writes, so the lease in ``storage/lease.py`` is used) runs when installed
(``scripts/swift-s3.sh install``). Run it beside the test suite to race under load.

    .venv/bin/python bench/faults.py                         # 200 trials, 2 and 4 promoters
    .venv/bin/python bench/faults.py --backends local moto --trials 50
    .venv/bin/python bench/faults.py --smoke                 # seconds: local and moto, 5 trials
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the S3 endpoints the tests start: moto, Swift

from histo_core.registry import Registry  # noqa: E402
from histo_core.storage import ConflictError, LocalStore, StoreError  # noqa: E402

HANG_S = 30.0


def _stores(backend: str, tmp: Path, endpoint) -> callable:
    """A factory of independent store clients (one per promoter, as separate runs have)."""
    if backend == "local":
        return lambda: LocalStore(tmp / "store")
    from histo_core.storage.s3 import S3Store

    client = endpoint.client()
    bucket = f"faults-{int(time.time() * 1000) % 10**9}"
    client.create_bucket(Bucket=bucket)
    return lambda: S3Store(f"s3://{bucket}/p", client=endpoint.client())


def _file_version(registry: Registry, folder: Path, tag: str, complete: bool = True) -> str:
    weights = folder / f"{tag}.pt"
    weights.write_bytes(tag.encode() * 2000)
    version = registry.new_version_id()
    if complete:
        registry.publish_version(version, {"model.pt": weights}, {"metrics": {"auc": 0.9}})
    else:  # what a run killed before version.json leaves
        registry.store.put_file(weights, f"{registry.prefix}/versions/{version}/model.pt")
    return version


def trial(make_store, folder: Path, promoters: int, name: str) -> dict[str, object]:
    registry = Registry(make_store(), name)
    start = _file_version(registry, folder, "start")
    registry.set_champion(start, None)
    champion = registry.champion()
    contenders = [_file_version(registry, folder, f"c{i}") for i in range(promoters - 1)]
    contenders.append(_file_version(registry, folder, "incomplete", complete=False))
    barrier, outcomes = threading.Barrier(promoters), {}

    def promote(version: str) -> None:
        own = Registry(make_store(), name)  # a client of its own, like a separate run
        barrier.wait()
        try:
            own.set_champion(version, champion)
            outcomes[version] = "won"
        except ConflictError:
            outcomes[version] = "conflict"
        except StoreError as exc:
            outcomes[version] = f"refused: {exc}"

    started = time.monotonic()
    threads = [threading.Thread(target=promote, args=(v,), daemon=True) for v in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S * 4)
    took = time.monotonic() - started
    final = registry.champion()
    winners = [v for v, o in outcomes.items() if o == "won"]
    return {"winners": len(winners), "incomplete_champion": final.version == contenders[-1],
            "champion_is_winner": (final.version == winners[0]) if len(winners) == 1 else None,
            "hang": took > HANG_S, "seconds": took}


def run(backend: str, promoters: int, trials: int, tmp: Path, endpoint) -> dict[str, object]:
    make_store = _stores(backend, tmp, endpoint)
    results = [trial(make_store, tmp, promoters, f"m{promoters}-{i}") for i in range(trials)]
    return {"backend": backend, "promoters": promoters, "trials": trials,
            "single": sum(r["winners"] == 1 and r["champion_is_winner"] for r in results),
            "none": sum(r["winners"] == 0 for r in results),
            "several": sum(r["winners"] > 1 for r in results),
            "incomplete": sum(r["incomplete_champion"] for r in results),
            "hangs": sum(r["hang"] for r in results),
            "slowest": max(r["seconds"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=["local", "moto", "swift"], default=["local", "moto", "swift"])
    parser.add_argument("--promoters", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="5 trials on the local store and moto")
    args = parser.parse_args()
    if args.smoke:
        args.backends, args.trials = ["local", "moto"], 5
    from s3_servers import start_moto, start_swift, swift_available

    rows = []
    print(f"{'backend':<8} {'promoters':>9} {'trials':>6} {'single winner':>13} {'no winner':>9} "
          f"{'several':>7} {'incomplete champion':>19} {'hangs >30s':>10} {'slowest s':>9}", flush=True)
    for backend in args.backends:
        if backend == "swift" and not swift_available():
            print("swift    skipped: not installed (scripts/swift-s3.sh install, as root)", flush=True)
            continue
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            endpoint = {"local": lambda _: None, "moto": start_moto, "swift": start_swift}[backend](tmp)
            try:
                for promoters in args.promoters:
                    row = run(backend, promoters, args.trials, tmp, endpoint)
                    rows.append(row)
                    print(f"{backend:<8} {promoters:>9} {row['trials']:>6} {row['single']:>13} {row['none']:>9} "
                          f"{row['several']:>7} {row['incomplete']:>19} {row['hangs']:>10} {row['slowest']:>9.1f}",
                          flush=True)
            finally:
                if endpoint is not None:
                    endpoint.stop()
    bad = [r for r in rows if r["single"] != r["trials"] or r["incomplete"] or r["hangs"]]
    print(f"faults: {sum(r['trials'] for r in rows)} trials, {len(bad)} configurations with a failure")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
