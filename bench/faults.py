"""Promotion races on every store backend: exactly one winner, never an incomplete champion.

Each trial files a few complete versions and one that cannot serve, then starts 2 (or
4) promoters at the same instant, each moving the champion from the same starting
version to its own contender with a conditional write (``Registry.set_champion``). The
one that cannot serve is, trial by trial in turn: incomplete (weights, no
``version.json``: a run killed mid-upload), without weights (``model.pt`` deleted), or
with corrupted weights (bytes changed after filing); it must always be refused. Every
promoter's outcome is counted (won, lost the race, refused, or an unexpected error), and
any exception that escapes a thread fails the run. It prints, per backend and number of
promoters:

    trials | single winners | no winner | several | unservable refused | pointer on one | errors | hangs > 30 s

The local store and moto's S3 server always run; OpenStack Swift (whose s3api refuses
conditional writes, so the lease in ``storage/lease.py`` is used) runs when installed
(``scripts/swift-s3.sh install``). Run it beside the test suite to race under load.

    .venv/bin/python bench/faults.py                         # 200 trials, 2 and 4 promoters
    .venv/bin/python bench/faults.py --backends local moto --trials 50
    .venv/bin/python bench/faults.py --smoke                 # seconds: 3 trials per count, local and moto
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

from histo_core.errors import UnservableVersionError  # noqa: E402
from histo_core.registry import Registry, RegistryStateError  # noqa: E402
from histo_core.storage import ConflictError, LocalStore, StoreError  # noqa: E402

HANG_S = 30.0
UNSERVABLE = ("incomplete", "no-weights", "corrupt-weights")
ESCAPED: list[str] = []  # exceptions that escaped a thread: each fails the run


def _escaped(hook: threading.ExceptHookArgs) -> None:
    ESCAPED.append(f"{hook.thread.name if hook.thread else '?'}: {hook.exc_type.__name__}: {hook.exc_value}")


threading.excepthook = _escaped


def _stores(backend: str, tmp: Path, endpoint) -> callable:
    """A factory of independent store clients (one per promoter, as separate runs have)."""
    if backend == "local":
        return lambda: LocalStore(tmp / "store")
    from histo_core.storage.s3 import S3Store

    client = endpoint.client()
    bucket = f"faults-{int(time.time() * 1000) % 10**9}"
    client.create_bucket(Bucket=bucket)
    return lambda: S3Store(f"s3://{bucket}/p", client=endpoint.client())


def _file_version(registry: Registry, folder: Path, tag: str, kind: str = "complete") -> str:
    weights = folder / f"{tag}.pt"
    weights.write_bytes(tag.encode() * 2000)
    version = registry.new_version_id()
    key = f"{registry.prefix}/versions/{version}/model.pt"
    if kind == "incomplete":  # what a run killed before version.json leaves
        registry.store.put_file(weights, key)
        return version
    registry.publish_version(version, {"model.pt": weights}, {"metrics": {"auc": 0.9}})
    if kind == "no-weights":
        registry.store.delete(key)
    elif kind == "corrupt-weights":
        weights.write_bytes(b"x" + tag.encode() * 1999)  # same size, other bytes
        registry.store.put_file(weights, key)
    return version


def _promote(registry: Registry, version: str, champion, barrier: threading.Barrier) -> str:
    barrier.wait()
    try:
        registry.set_champion(version, champion)
        return "won"
    except ConflictError:
        return "conflict"
    except (UnservableVersionError, RegistryStateError, StoreError):
        return "refused"
    except Exception as exc:  # noqa: BLE001 - counted and shown: the bench's point is that none happens
        return f"error: {type(exc).__name__}: {exc}"


def trial(make_store, folder: Path, promoters: int, name: str, unservable: str) -> dict[str, object]:
    registry = Registry(make_store(), name)
    start = _file_version(registry, folder, "start")
    registry.set_champion(start, None)
    champion = registry.champion()
    contenders = [_file_version(registry, folder, f"c{i}") for i in range(promoters - 1)]
    contenders.append(_file_version(registry, folder, unservable, kind=unservable))
    barrier, outcomes = threading.Barrier(promoters), {}

    def promote(version: str) -> None:
        outcomes[version] = _promote(Registry(make_store(), name), version, champion, barrier)  # a client each

    started = time.monotonic()
    threads = [threading.Thread(target=promote, args=(v,), daemon=True) for v in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S * 4)
    took = time.monotonic() - started
    final = registry.champion()
    winners = [v for v, o in outcomes.items() if o == "won"]
    errors = [o for o in outcomes.values() if o.startswith("error")]
    for error in errors:
        print(f"  {name}: {error}", flush=True)
    return {"winners": len(winners), "unservable_champion": final.version == contenders[-1],
            "unservable_refused": outcomes.get(contenders[-1]) == "refused",
            "champion_is_winner": (final.version == winners[0]) if len(winners) == 1 else None,
            "errors": len(errors), "hang": took > HANG_S or len(outcomes) < promoters, "seconds": took}


def run(backend: str, promoters: int, trials: int, tmp: Path, endpoint) -> dict[str, object]:
    make_store = _stores(backend, tmp, endpoint)
    results = [trial(make_store, tmp, promoters, f"m{promoters}-{i}", UNSERVABLE[i % len(UNSERVABLE)])
               for i in range(trials)]
    return {"backend": backend, "promoters": promoters, "trials": trials,
            "single": sum(r["winners"] == 1 and r["champion_is_winner"] for r in results),
            "none": sum(r["winners"] == 0 for r in results),
            "several": sum(r["winners"] > 1 for r in results),
            "refused": sum(r["unservable_refused"] for r in results),
            "unservable": sum(r["unservable_champion"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "hangs": sum(r["hang"] for r in results),
            "slowest": max(r["seconds"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=["local", "moto", "swift"], default=["local", "moto", "swift"])
    parser.add_argument("--promoters", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="3 trials per count on the local store and moto "
                                                              "(each unservable kind once)")
    args = parser.parse_args()
    if args.smoke:
        # Swift's start alone is 20 s of two cores; its races are test_store_contract's.
        args.trials, args.backends = len(UNSERVABLE), [b for b in args.backends if b != "swift"]
    from s3_servers import start_moto, start_swift, swift_available

    rows = []
    print(f"{'backend':<8} {'promoters':>9} {'trials':>6} {'single winner':>13} {'no winner':>9} {'several':>7} "
          f"{'unservable refused':>18} {'unservable champion':>19} {'errors':>6} {'hangs >30s':>10} {'slowest s':>9}",
          flush=True)
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
                          f"{row['several']:>7} {row['refused']:>18} {row['unservable']:>19} {row['errors']:>6} "
                          f"{row['hangs']:>10} {row['slowest']:>9.1f}", flush=True)
            finally:
                if endpoint is not None:
                    endpoint.stop()
    bad = [r for r in rows if r["single"] != r["trials"] or r["refused"] != r["trials"] or r["unservable"]
           or r["errors"] or r["hangs"]]
    for escaped in ESCAPED:
        print(f"uncaught in a thread: {escaped}")
    print(f"faults: {sum(r['trials'] for r in rows)} trials, {len(bad)} configurations with a failure, "
          f"{len(ESCAPED)} uncaught thread exceptions")
    sys.exit(1 if bad or ESCAPED else 0)


if __name__ == "__main__":
    main()
