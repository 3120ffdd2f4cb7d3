"""``histo retrain``, ``histo serve`` and ``histo demo``: the commands that start Prefect
(imported inside them, so that ``histo --help`` answers at once)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import argparse
import time
from pathlib import Path
from typing import Any

from histo_cli.checks import OK, REJECTED, STORE_ALIASES, require_data_root, require_device, require_store
from histo_cli.options import add_config_file_options, add_config_options, print_config, resolve_config
from histo_core.config import RetrainConfig, StoreConfig, TrainConfig

DEMO_EPOCHS = 3
RETRAIN_ALIASES = {**STORE_ALIASES, "train.epochs": "--epochs", "train.device": "--device"}


def register_demo_and_retrain(sub: argparse._SubParsersAction) -> None:
    """histo demo, histo retrain"""
    demo = sub.add_parser("demo", help="generate sample data and run two retrains (no cloud account)")
    demo.add_argument("--workdir", default="histo-demo",
                      help="folder for data, store and scratch, one sub-folder per demo (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                      help="training epochs per run; few keep the demo to minutes (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)

    retrain = sub.add_parser("retrain", help="validate, split, train, evaluate, promote, upload",
                             description="One retrain run. Every field of the run's config (RetrainConfig) is "
                                         "an option; --epochs, --device, --store, --endpoint-url and --region "
                                         "are short for --train.epochs, --train.device and --store.*.")
    add_config_file_options(retrain)
    add_config_options(retrain, RetrainConfig, aliases=RETRAIN_ALIASES)
    retrain.set_defaults(func=cmd_retrain)


def register_serve(sub: argparse._SubParsersAction) -> None:
    """histo serve"""
    serve = sub.add_parser("serve", help="serve the retrain deployments (nightly, on new data, and by hand)")
    serve.add_argument("--cron", default="0 2 * * *", help="nightly schedule, cron syntax (default: %(default)s)")
    serve.add_argument("--timezone", default="UTC", help="IANA time zone of the cron schedule (default: %(default)s)")
    serve.add_argument("--watch-every", type=float, default=300,
                       help="seconds between looks for new batches (default: %(default)s)")
    add_config_file_options(serve)
    add_config_options(serve, RetrainConfig, aliases=RETRAIN_ALIASES)
    serve.set_defaults(func=cmd_serve)


def quiet_prefect_defaults() -> None:
    """Defaults for running on a laptop; an explicit environment setting wins.

    The ephemeral API server's telemetry heartbeat races its own database migration on
    first start and prints a 'database is locked' traceback; nothing is lost, but it
    reads like a failure, so it is off unless asked for.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its temporary API to start; on a busy 2-core machine it has
    # taken longer, and the run then fails before it begins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _run_retrain(config: RetrainConfig) -> dict[str, Any]:
    quiet_prefect_defaults()
    from histo_flows.retrain import retrain

    return retrain(config)


def cmd_retrain(args: argparse.Namespace) -> int:
    config = resolve_config(RetrainConfig, args)
    if args.print_config:
        print_config(config)
        return OK
    require_data_root(config.data)  # fail in a second, before starting Prefect, on an obvious mistake
    require_device(config.train.device)
    require_store(config.store, config.model_name)
    result = _run_retrain(config)
    return OK if result["outcome"] in ("promoted", "rejected") else REJECTED


def cmd_demo(args: argparse.Namespace) -> int:
    """Two retrain runs on generated data: the first model becomes champion, then a
    second batch arrives and the new challenger must beat it on the same hold-out."""
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    started = time.perf_counter()
    root = Path(args.workdir).resolve() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = root / "data"
    config = RetrainConfig(data=str(data), store=StoreConfig(uri=str(root / "store")), workdir=str(root / "work"),
                           train=TrainConfig(epochs=args.epochs))
    outcomes = []
    for step, (batch, count, seed) in enumerate([("batch-001", 2000, 1), ("batch-002", 1500, 2)], 1):
        print(f"\n=== demo {step}/2: new labelled batch {batch} ({count} generated patches) ===", flush=True)
        write_kaggle_layout(data / "batches" / batch, SyntheticSpec(count=count, seed=seed))
        outcomes.append(_run_retrain(config))
    print("\n=== demo finished in {:.0f}s ===".format(time.perf_counter() - started))
    for i, r in enumerate(outcomes, 1):
        print(f"run {i}: {r['outcome']:<9} challenger AUC {r['challenger_auc']:.4f}  "
              f"champion before: {r['previous_champion'] or 'none'}")
    print(f"champion now: {outcomes[-1]['champion']}\n"
          f"store (models, versions, events, run records): {config.store.uri}\n"
          f"data: {data}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = resolve_config(RetrainConfig, args)
    if args.print_config:
        print_config(config)
        return OK
    require_store(config.store, config.model_name)
    quiet_prefect_defaults()
    from histo_deployments.serve import serve_deployments

    serve_deployments(config, cron=args.cron, timezone=args.timezone, watch_every=args.watch_every)
    return OK
