"""``histo``: run the demo, a retrain, or make sample data.

Prefect and torch are imported inside the commands that need them, so ``histo --help``
answers at once.
"""

from __future__ import annotations

import argparse
import errno
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from histo_cli.options import add_config_file_options, add_config_options, print_config, resolve_config
from histo_cli.progress import EpochBars, ProgressBar
from histo_core.config import (EvalConfig, PredictConfig, RetrainConfig, SplitConfig, StoreConfig, TrainConfig,
                                ValidationConfig)
from histo_core.atomic import atomic_write
from histo_core.data.download import DownloadError
from histo_core.storage.base import StoreError


DEMO_EPOCHS = 3
# Exit codes: what a script or a scheduler needs to tell apart.
OK, REJECTED, USAGE, ENVIRONMENT = 0, 1, 2, 3


def _quiet_prefect_defaults() -> None:
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
    _quiet_prefect_defaults()
    from histo_flows.retrain import retrain

    return retrain(config)


# Short spellings of the options used most; the long ones (--store.uri) work too.
STORE_ALIASES = {"store.uri": "--store", "store.endpoint_url": "--endpoint-url", "store.region": "--region"}
RETRAIN_ALIASES = {**STORE_ALIASES, "train.epochs": "--epochs", "train.device": "--device"}


def _store(args: argparse.Namespace) -> StoreConfig:
    return resolve_config(StoreConfig, args, prefix="store.", section="store")


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, StoreConfig, "store.", STORE_ALIASES)


def cmd_synth(args: argparse.Namespace) -> int:
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    start = time.perf_counter()
    write_kaggle_layout(args.dest, SyntheticSpec(count=args.count, seed=args.seed))
    print(f"wrote {args.count} patches to {args.dest} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the data set passes (quarantined rows allowed), 1 when it is stopped."""
    import json

    cfg = resolve_config(ValidationConfig, args, section="validation")
    if args.print_config:
        print_config({"validation": cfg})
        return OK
    _require_dir(args.data, "data folder")
    from histo_core.data.manifest import build_manifest
    from histo_core.validation import validate_manifest

    bar, faults = ProgressBar("inspecting images"), {}
    try:
        manifest = build_manifest(args.data, progress=bar, faults=faults)
    finally:
        bar.close()
    result = validate_manifest(manifest, cfg, docs_dir=args.docs, batch_faults=faults)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(result.report(), indent=2) + "\n"))
    print(result.summary().split(" -- ")[0])
    for batch, verdict in result.left_out().items():
        print(f"  batch {batch} {verdict['verdict']}: {'; '.join(verdict['reasons'])}")
    for row in result.rows[result.rows["status"] != "ok"].head(args.show).itertuples():
        print(f"  {row.status:<11} {row.id}: {row.reason}")
    if result.drift:
        print(f"colour drift of batch {result.drift['batch']}: {result.drift['score']:.2f} SD "
              f"({'WARNING' if result.drift['warning'] else 'ok'}, threshold {result.drift['threshold']})")
    if args.report:
        print(f"report: {args.report}")
    if args.docs:
        print(f"Data Docs: {args.docs / 'index.html'}")
    if not result.passed:
        print("histo: data set rejected: " + "; ".join(result.problems), file=sys.stderr)
        return 1
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from histo_core.data.download import PCAM_URL, download, pcam_resources

    bars: dict[str, object] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        bars.setdefault(name, ProgressBar(name, unit="B"))(done, total)

    try:
        paths = download(pcam_resources(args.splits, url=args.url or PCAM_URL), args.dest, progress)
    finally:
        for bar in bars.values():
            bar.close()
    for path in paths:
        print(f"verified {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score DATA with a checkpoint file, or a version (default: the champion) of a store;
    exit 1 when any image could not be scored (they are listed in OUT.errors.csv)."""
    import tempfile

    config = resolve_config(PredictConfig, args)
    if args.print_config:
        print_config(config)
        return OK
    _require_dir(config.data, "data folder")
    if config.checkpoint is not None:
        _require_file(Path(config.checkpoint), "checkpoint")
    if config.order is not None:
        _require_file(Path(config.order), "sample submission")
    _require_device(config.device)
    from histo_core.predict import list_patches, predict_folder, weights_for

    patches = list_patches(config.data)
    _check_image_size(patches["path"], config.data)
    bar = ProgressBar("scoring")
    with tempfile.TemporaryDirectory() as tmp:
        weights, which = weights_for(config, tmp)
        print(f"model: {which}")
        try:
            result = predict_folder(weights, config.data, config.out, config.device, config.batch_size,
                                    tta=config.tta, order=config.order, progress=lambda done: bar(done, len(patches)))
        finally:
            bar.close()
    print(f"wrote {result.csv} ({result.scored} rows: id,label)")
    if result.failed:
        print(f"histo: {result.failed} of {result.scored + result.failed} images could not be scored and are not "
              f"in {result.csv.name}; each is listed with its reason in {result.errors_csv}", file=sys.stderr)
        return REJECTED
    return OK


def _require_dir(path: str | Path, what: str) -> None:
    """Fail in a second, before heavy imports or scans, on a path that is not there."""
    if "://" not in str(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such {what}")


def _require_data_root(data: str) -> None:
    """A local data root that is missing or in no supported layout fails at once (an
    s3:// root is checked when it is mirrored)."""
    if "://" not in data:
        from histo_core.data.sources import detect_layout

        _require_dir(data, "data folder")
        detect_layout(Path(data))


def _check_image_size(paths: Any, data: str, size: int = 96, sample: int = 8) -> None:
    """Before loading the model and scanning everything: when the first ``sample`` readable
    images all have another size, the data is not for this model (a mix is scored, and
    the odd ones reported per image)."""
    from histo_core.data.images import checked_stat, open_image
    from histo_core.data.sources import DataSourceError

    root, sizes = os.path.realpath(data), []
    for path in list(paths)[:sample]:
        try:
            checked_stat(path, root)  # no link out of the folder, no pipe that would block
            with open_image(path) as img:
                sizes.append(img.size)
        except Exception:  # noqa: BLE001 - unreadable files are reported per image later
            continue
    if sizes and all(s != (size, size) for s in sizes):
        width, height = sizes[0]
        raise DataSourceError(f"{data}: the images are {width}x{height} (the first {len(sizes)} checked); the "
                              f"model scores {size}x{size} patches: crop or resize them first")


def _require_device(name: str) -> None:
    """A device the machine lacks (``cuda`` without a GPU) fails now (exit 3), before the
    data is read, not at the first batch."""
    from histo_core.inference import pick_device

    pick_device(name)


def _require_store(store: StoreConfig, model_name: str) -> None:
    """Reach the store once before any work, and prove that it can be written (a probe
    object, removed after): an unreachable endpoint, a missing bucket or a read-only
    folder fails in seconds (exit 3), not after an hour of training."""
    from histo_core.registry import Registry
    from histo_core.storage import open_store, probe_writable

    registry = Registry(open_store(store), model_name)
    registry.versions()
    probe_writable(registry.store)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")


def cmd_train(args: argparse.Namespace) -> int:
    """Validate, split and train DATA into OUT without an orchestrator (best.pt, last.pt,
    history.json, config.json); a second call with the same arguments resumes."""
    import json

    cfg = resolve_config(TrainConfig, args, section="train")
    validation = resolve_config(ValidationConfig, args, prefix="validation.", section="validation")
    split_cfg = resolve_config(SplitConfig, args, prefix="split.", section="split")
    if args.nproc > 1 and cfg.num_threads == 0:  # don't oversubscribe the CPU
        cfg = cfg.model_copy(update={"num_threads": max(1, (os.cpu_count() or 1) // args.nproc)})
    if args.print_config:
        print_config({"train": cfg, "validation": validation, "split": split_cfg})
        return OK
    _check_before_writing(args.data, cfg)
    from histo_core import steps
    from histo_core.layout import DatasetDir, ModelDir

    out = Path(args.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps({"train": cfg.model_dump(), "validation": validation.model_dump(),
                              "split": split_cfg.model_dump()}, indent=2) + "\n"
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(config_json))
    bar = ProgressBar("inspecting images")
    try:
        dataset = steps.validate(args.data, DatasetDir(out / "data"), validation, out / "manifests", progress=bar)
        split = steps.split(dataset, split_cfg)
    except Exception:
        if created:  # a rejected data set leaves no half-made folder; the error says why
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        bar.close()
    print(f"data: {json.loads(dataset.validation.read_text())['counts']}")
    model = ModelDir(out)

    if args.nproc > 1:
        import subprocess

        steps.load_partitions(split, out / "cache")  # decode once here, not in every rank
        steps.record_split(model, split)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                   "-m", "histo_cli.ddp_worker", "--split", str(split.root), "--out", str(out),
                   "--cache", str(out / "cache"), "--config", cfg.model_dump_json()]
        if subprocess.run(command).returncode != 0:
            raise RuntimeError(f"distributed training with {args.nproc} processes failed (see above)")
    else:
        from histo_core.train import format_epoch

        bars = EpochBars(cfg.epochs)
        try:
            steps.train(split, model, out / "cache", cfg, lambda r: print(format_epoch(r, cfg.epochs), flush=True),
                        bars)
        finally:
            bars.close()
    print(f"best model: {model.best}\nlast checkpoint: {model.last}\nhistory: {model.history}")
    return 0


def _check_before_writing(data: str, cfg: TrainConfig) -> None:
    """The mistakes that would otherwise surface after a scan of every image, with an
    output folder already made: a device the machine lacks, a data root that is not there
    or in no known layout (an unknown architecture fails when the config is built)."""
    _require_device(cfg.device)
    _require_data_root(data)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the labelled images of DATA (any layout) with a checkpoint: metrics with
    DeLong and bootstrap CIs, calibration, and with --out the predictions and plots.

    With --split PART (a checkpoint written by histo train or a retrain, whose folder
    records its split), only that partition's images are scored, and the temperature and
    operating point are fitted on the validation images, as a retrain does. Without it they
    are fitted by cross-fitting on the scored images."""
    import json

    import numpy as np

    cfg = resolve_config(EvalConfig, args, section="evaluation")
    if args.print_config:
        print_config({"evaluation": cfg})
        return OK
    if args.checkpoint is None:
        raise ValueError("--checkpoint is required: the weights file to evaluate (best.pt, or a version's model.pt)")
    _require_file(args.checkpoint, "checkpoint")
    _require_dir(args.data, "data folder")
    _require_device(args.device)
    from histo_core import steps
    from histo_core.checkpoint import read_checkpoint
    from histo_core.data.sources import DataSourceError, list_images

    read_checkpoint(args.checkpoint)  # a bad file fails now, not after the scan
    table = list_images(args.data)
    table = table[table["labelled"] & table["label"].isin(["0", "1"]) & (table["path"] != "")]
    if table.empty:
        raise DataSourceError(f"{args.data}: no labelled images to evaluate on")
    _check_image_size(table["path"], args.data)
    partition = _partitions(args, steps.training_split(args.checkpoint), table)
    scored = table[partition.isin({args.split, "val"})] if args.split else table
    bar = ProgressBar("scoring")
    try:
        logits, errors = _score(args, cfg, scored, bar)
    finally:
        bar.close()
    ok = ~np.isnan(logits)
    if not ok.any():
        raise DataSourceError(f"{args.data}: none of the {len(scored)} images could be scored; the first: "
                              f"{scored['id'].iloc[0]}: {errors[0]}")
    metrics, probability, target = _evaluation_report(args, cfg, scored, partition, logits, ok)
    first_error = next((e for e in errors if e), "")
    print(f"AUC {metrics['auc']:.4f} (DeLong 95% CI {metrics['auc_ci_low']:.4f}-{metrics['auc_ci_high']:.4f}, "
          f"bootstrap {metrics['auc_bootstrap_ci_low']:.4f}-{metrics['auc_bootstrap_ci_high']:.4f})  "
          f"on {metrics['n']} images{' with TTA' if cfg.tta else ''}"
          + (f"; {metrics['unreadable']} could not be scored (first: {first_error})" if metrics["unreadable"] else ""))
    where = "the validation images" if metrics["operating_point"]["fitted_on"] == "validation" else \
        f"these images by {metrics['operating_point']['fitted_on']}"
    print(f"calibrated on {where}: temperature {metrics['temperature']:.3f}, calibration error (ECE) "
          f"{metrics['ece_uncalibrated']:.4f} as scored, {metrics['ece']:.4f} calibrated")
    print(f"at p >= 0.5 (calibrated): accuracy {metrics['accuracy']:.4f}  sensitivity {metrics['sensitivity']:.4f}  "
          f"specificity {metrics['specificity']:.4f}")
    op = metrics["operating_point"]
    print(f"operating point for sensitivity {op['target_sensitivity']}, chosen on {where}: calibrated p >= "
          f"{op['threshold']:.3f}: sensitivity {op['sensitivity']:.4f}, specificity {op['specificity']:.4f}")
    if args.out:
        _write_evaluation(args.out, target, probability, metrics)
        print(f"predictions, metrics and plots: {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n"))
    return OK


def _partitions(args: argparse.Namespace, split: Any, table: Any) -> Any:
    """Each row's partition in the checkpoint's training split (None without one); warns
    when rows it was trained on would be scored."""
    import pandas as pd

    if split is None:
        if args.split:
            raise ValueError(f"--split {args.split}: {args.checkpoint}'s folder records no split (only checkpoints "
                             "written by histo train or a retrain do, with their data set folder still there)")
        return None
    from histo_core import steps

    partition = table["id"].map(steps.read_split(split).set_index("id")["partition"])
    trained_on = int((partition == "train").sum())
    if not args.split and trained_on:
        print(f"histo: warning: {trained_on} of the {len(table)} images were used to train this model "
              f"(train partition of {split.csv}); its metrics on them are optimistic. "
              "--split test scores only its held-out test images.", file=sys.stderr)
    return pd.Series(partition, index=table.index)


def _score(args: argparse.Namespace, cfg: EvalConfig, table: Any, bar: ProgressBar) -> tuple[Any, list[str]]:
    from histo_core.predict import score_paths

    return score_paths(args.checkpoint, table["path"].tolist(), args.device, batch_size=cfg.batch_size,
                       tta=cfg.tta, root=os.path.realpath(args.data), progress=lambda done: bar(done, len(table)))


def _evaluation_report(args: argparse.Namespace, cfg: EvalConfig, scored: Any, partition: Any, logits: Any,
                       ok: Any) -> tuple[dict[str, Any], Any, Any]:
    """Metrics of the scored rows, their temperature and operating point fitted on the
    validation images (with --split) or by cross-fitting on the scored images themselves."""
    from histo_core.evaluate import cross_fitted_report, full_report, sigmoid

    labels = scored["label"].astype(int).to_numpy()
    if args.split and partition is not None:
        part = partition[scored.index].to_numpy()
        val, target = ok & (part == "val"), ok & (part == args.split)
        metrics = full_report(labels[val], logits[val], labels[target], logits[target], cfg.target_sensitivity,
                              cfg.bootstrap)
        probability = sigmoid(logits[target] / metrics["temperature"])
        unreadable = int((~ok & (part == args.split)).sum())
    else:
        target = ok
        metrics, probability = cross_fitted_report(labels[ok], logits[ok], cfg.target_sensitivity, cfg.bootstrap)
        unreadable = int((~ok).sum())
    metrics.update(tta=cfg.tta, unreadable=unreadable, data=str(args.data), checkpoint=str(args.checkpoint),
                   split=args.split)
    return metrics, probability, scored[target]


def _write_evaluation(out: Path, rows: Any, probability: Any, metrics: dict[str, Any]) -> None:
    """predictions.csv (id, label, probability), metrics.json and the ROC, PR and reliability plots."""
    import json

    import pandas as pd

    from histo_core.evaluate import plot_curves
    from histo_core.tables import write_csv

    out.mkdir(parents=True, exist_ok=True)
    labels = rows["label"].astype(int).to_numpy()
    write_csv(pd.DataFrame({"id": rows["id"].to_numpy(), "label": labels, "probability": probability}),
              out / "predictions.csv")
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n"))
    threshold = metrics.get("operating_point", {}).get("threshold", 0.5)
    plot_curves(labels, {"model": probability}, {n: out / f"{n}.png" for n in ("roc", "pr", "reliability")},
                {"model": threshold})


def cmd_retrain(args: argparse.Namespace) -> int:
    config = resolve_config(RetrainConfig, args)
    if args.print_config:
        print_config(config)
        return OK
    _require_data_root(config.data)  # fail in a second, before starting Prefect, on an obvious mistake
    _require_device(config.train.device)
    _require_store(config.store, config.model_name)
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
    _require_store(config.store, config.model_name)
    _quiet_prefect_defaults()
    from histo_deployments.serve import serve_deployments

    serve_deployments(config, cron=args.cron, timezone=args.timezone, watch_every=args.watch_every)
    return OK


def cmd_models(args: argparse.Namespace) -> int:
    """List, inspect, promote or roll back versions; every pointer move is a conditional write."""
    import json

    from histo_core.registry import RegistryStateError, open_registry
    from histo_core.storage import CorruptObjectError

    registry = open_registry(_store(args), args.model_name)
    try:
        champion, corrupt = registry.champion(), None
    except CorruptObjectError as exc:  # promote can replace it; nothing else can trust it
        champion, corrupt = None, exc
    if corrupt and args.models_command != "promote":
        print(f"histo: warning: the champion pointer is unreadable: {corrupt}\n"
              f"  repair it by choosing the version to serve: histo models promote VERSION", file=sys.stderr)
        if args.models_command != "list":
            return ENVIRONMENT
    if args.models_command == "list":
        _list_versions(registry, champion, args.json)
        return ENVIRONMENT if corrupt else OK
    if args.models_command == "verify":
        return _verify_versions(registry, champion)
    if args.models_command == "events":
        events = registry.events()
        if args.json:
            print(json.dumps(events, indent=2))
        for event in [] if args.json else events:
            details = {k: v for k, v in event.items() if k not in ("time", "kind", "version")}
            print(f"{_when(event['time'])}  {event['kind']:<17} {event['version']}  {json.dumps(details)}")
        return OK
    if args.models_command == "show":
        if args.version is None and champion is None:
            raise RegistryStateError(f"{args.model_name} has no champion in {registry.store.uri}; name a version "
                                     "(histo models list shows them)")
        print(json.dumps(registry.version(args.version or champion.version), indent=2))
    elif args.models_command in ("promote", "rollback"):
        from histo_core.storage import probe_writable

        probe_writable(registry.store)  # a read-only store is exit 3 before anything is judged
    if args.models_command == "promote":
        if corrupt:
            registry.repair_champion(args.version, corrupt)
            print(f"champion of {args.model_name}: replaced the unreadable pointer with {args.version}")
            return OK
        if champion is not None and champion.version == args.version:
            print(f"{args.version} is already the champion of {args.model_name}; nothing changed")
            return OK
        registry.set_champion(args.version, champion, promoted_by="histo models promote")
        print(f"champion of {args.model_name}: {champion.version if champion else 'none'} -> {args.version}")
    elif args.models_command == "rollback":
        old, new = registry.rollback()
        print(f"champion of {args.model_name} rolled back: {old} -> {new}")
    return OK


def _verify_versions(registry: Any, champion: Any) -> int:
    """Check that every version can serve; exit 1 when any cannot (0: all can)."""
    versions = registry.versions()
    unusable = 0
    for version in versions:
        problems = registry.verify(version)
        unusable += bool(problems)
        mark = "*" if champion and champion.version == version else " "
        print(f"{mark} {version}  " + ("ok" if not problems else "UNUSABLE: " + "; ".join(problems)))
    print(f"{len(versions) - unusable} of {len(versions)} versions of {registry.name} can serve"
          + (" (* the champion)" if champion else "; no champion"))
    if champion and champion.version not in versions:
        print(f"histo: the champion pointer names {champion.version}, which is not a complete version",
              file=sys.stderr)
        return REJECTED
    return REJECTED if unusable else OK


def cmd_store_gc(args: argparse.Namespace) -> int:
    """Apply the retention policy (histo_core.retention); --dry-run only lists."""
    from histo_core.registry import open_registry
    from histo_core.retention import apply_gc, plan_gc

    if args.keep_last < 1 or (args.runs_older_than is not None and args.runs_older_than < 0):
        raise ValueError("--keep-last must be at least 1 and --runs-older-than not negative")
    config = _store(args)
    registry = open_registry(config, args.model_name)
    plan = plan_gc(registry.store, registry, args.keep_last, args.runs_older_than)
    for version, why in sorted(plan.kept.items()):
        print(f"keep    {version}  ({why})")
    verb = "would remove" if args.dry_run else "remove"
    for removal in plan.removals:
        print(f"{verb}  {removal.what}  {removal.size / 2**20:.1f} MiB  ({removal.why})")
    if not args.dry_run:
        apply_gc(registry.store, plan)
    print(f"{len(plan.removals)} item(s), {plan.size / 2**20:.1f} MiB {'would be ' if args.dry_run else ''}removed "
          f"from {config.uri}; {len(plan.kept)} version(s) kept")
    return OK


def cmd_batches(args: argparse.Namespace) -> int:
    """List a data root's batch verdicts, or readmit one (``histo data readmit``)."""
    import json

    from histo_core.batch_verdicts import VerdictStore
    from histo_core.storage import open_store

    verdicts = VerdictStore(open_store(_store(args)), args.data)
    if args.data_command == "readmit":
        record = verdicts.readmit(args.batch, args.note)
        print(f"batch {args.batch} of {args.data}: {record['previous']['verdict']} -> readmitted; the next "
              "retrain includes it")
        return OK
    records = verdicts.all()
    if args.json:
        print(json.dumps(records, indent=2))
        return OK
    if not records:
        print(f"no batch verdicts for {args.data} in {verdicts.store.uri} (a retrain records them)")
    for batch, record in sorted(records.items(), key=lambda item: (item[1].get("decided") or "", item[0])):
        print(f"{record.get('decided', '?'):<26} {record['verdict']:<11} {batch}  {record.get('rows', 0)} rows"
              + (f"  {'; '.join(record['reasons'])}" if record.get("reasons") else ""))
    return OK


def _when(version_or_time: str) -> str:
    """``v20261126T130501123456Z`` -> ``2026-11-26 13:05:01 UTC``."""
    stamp = dt.datetime.strptime(version_or_time.lstrip("v")[:15], "%Y%m%dT%H%M%S")
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _list_versions(registry: Any, champion: Any, as_json: bool) -> None:
    """Versions, oldest first: date, AUC, status; * marks the champion."""
    import json

    from histo_core.storage import CorruptObjectError

    records, errors = {}, {}
    for version in registry.versions():  # each version.json read once
        try:
            records[version] = registry.version(version)
        except CorruptObjectError as exc:
            records[version], errors[version] = None, str(exc)
    statuses = registry.statuses(champion, records)
    rows = [{"version": v, "status": "unreadable", "error": errors[v]} if r is None else
            {"version": v, "created": _when(v), "auc": r.get("metrics", {}).get("auc"), "status": statuses[v],
             "champion": bool(champion and champion.version == v)} for v, r in records.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no versions of {registry.name} in {registry.store.uri}")
    for row in rows:
        if row["status"] == "unreadable":
            print(f"! {row['version']}  UNREADABLE: {row['error']}")
            continue
        auc = "—" if row["auc"] is None else f"{row['auc']:.4f}"
        print(f"{'*' if row['champion'] else ' '} {row['version']}  {row['created']}  AUC {auc}  {row['status']}")


def build_parser() -> argparse.ArgumentParser:
    from histo_core import __version__

    parser = argparse.ArgumentParser(prog="histo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"histo-retrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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

    train = sub.add_parser("train", help="validate, split and train a model into a folder (no Prefect)",
                           description="Validate, split and train DATA into OUT without an orchestrator. Every "
                                       "training option is a field of TrainConfig; --config reads the same YAML "
                                       "as retrain (its train, validation and split sections).")
    train.add_argument("--data", required=True, help="data root in any supported layout")
    train.add_argument("--out", required=True, type=Path, help="folder for best.pt, last.pt, history.json")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes for distributed data-parallel training (one per GPU; gloo on CPU; "
                            "default: %(default)s)")
    add_config_file_options(train)
    add_config_options(train, TrainConfig)
    add_config_options(train, ValidationConfig, "validation.")
    add_config_options(train, SplitConfig, "split.")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="AUC and more of a checkpoint on a labelled data root",
        description="Score the labelled images of DATA with a checkpoint, as a retrain scores its hold-out: AUC "
                    "with DeLong and bootstrap CIs, calibration, the operating point, and with --out the "
                    "predictions and plots. The evaluation options are EvalConfig's (TTA is on by default, as in "
                    "a retrain); --config reads a retrain YAML's evaluation section.")
    evaluate.add_argument("--checkpoint", type=Path, help="weights file (best.pt, or a version's model.pt)")
    evaluate.add_argument("--model", dest="checkpoint", type=Path, help=argparse.SUPPRESS)  # its old name
    evaluate.add_argument("--data", required=True, help="labelled data root in any layout; every row is scored")
    evaluate.add_argument("--split", choices=["train", "val", "test"],
                          help="score only this partition of the checkpoint's training split (histo train and "
                               "retrain record it); calibrated on its val images as a retrain is. Without it, "
                               "calibration and operating point are cross-fitted on the scored images")
    evaluate.add_argument("--out", type=Path,
                          help="folder for predictions.csv, metrics.json and the ROC, PR and reliability plots")
    evaluate.add_argument("--json", type=Path, help="also write the metrics here")
    evaluate.add_argument("--device", default=TrainConfig.model_fields["device"].default,
                          help=f"{TrainConfig.model_fields['device'].description} (default: %(default)s)")
    add_config_file_options(evaluate)
    add_config_options(evaluate, EvalConfig)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="score patches: id,label (tumour probability) CSV",
                             description="Score a folder of patches with the store's champion, a named --version, "
                                         "or a --checkpoint file. Every field of PredictConfig (shared with the "
                                         "predict deployment) is an option; --config reads the same fields.")
    add_config_file_options(predict)
    add_config_options(predict, PredictConfig, aliases=STORE_ALIASES)
    predict.add_argument("--model", dest="checkpoint", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    predict.add_argument("--name", dest="model_name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser("serve", help="serve the retrain deployments (nightly, on new data, and by hand)")
    serve.add_argument("--cron", default="0 2 * * *", help="nightly schedule, cron syntax (default: %(default)s)")
    serve.add_argument("--timezone", default="UTC", help="IANA time zone of the cron schedule (default: %(default)s)")
    serve.add_argument("--watch-every", type=float, default=300,
                       help="seconds between looks for new batches (default: %(default)s)")
    add_config_file_options(serve)
    add_config_options(serve, RetrainConfig, aliases=RETRAIN_ALIASES)
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list, show, promote or roll back model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, text in [("list", "versions, oldest first: date, AUC, status; * marks the champion"),
                       ("events", "every promotion, rejection, rollback and repair, oldest first"),
                       ("show", "one version's record (default: the champion)"),
                       ("promote", "make VERSION the champion (it must pass the checks of verify)"),
                       ("rollback", "re-point the champion to the latest earlier one that can serve"),
                       ("verify", "check that every version can serve: weights present, checksum, loadable "
                                  "(exit 1 when any cannot)")]:
        p = models_sub.add_parser(name, help=text)
        if name in ("show", "promote"):
            p.add_argument("version", nargs="?" if name == "show" else None,
                           help="a version id, as histo models list prints it"
                                + (" (default: the champion)" if name == "show" else ""))
        if name in ("list", "events"):
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--model-name", default=RetrainConfig.model_fields["model_name"].default,
                       help="registry model (default: %(default)s)")
        p.add_argument("--name", dest="model_name", help=argparse.SUPPRESS)  # its old name
        _add_store_arguments(p)
        p.set_defaults(func=cmd_models)

    store = sub.add_parser("store", help="store housekeeping").add_subparsers(dest="store_command", required=True)
    gc = store.add_parser("gc", help="remove versions and run records the retention policy does not keep",
                          description="Keep the champion, every former champion and the newest --keep-last "
                                      "versions; remove other versions and failed (incomplete) uploads older "
                                      "than a day; with --runs-older-than, also run records older than that. "
                                      "--dry-run lists what would go and changes nothing.")
    gc.add_argument("--keep-last", type=int, default=5, help="newest versions always kept (default: %(default)s)")
    gc.add_argument("--runs-older-than", type=float, metavar="DAYS",
                    help="also remove run records (runs/<run-id>/) older than DAYS (default: keep them all)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    gc.add_argument("--model-name", default=RetrainConfig.model_fields["model_name"].default,
                    help="registry model (default: %(default)s)")
    _add_store_arguments(gc)
    gc.set_defaults(func=cmd_store_gc)

    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write generated H&E-like patches in the Kaggle layout")
    synth.add_argument("dest", type=Path, help="folder to write train/ and train_labels.csv into")
    synth.add_argument("--count", type=int, default=2000, help="patches to write (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0,
                       help="the same seed writes the same patches (default: %(default)s)")
    synth.set_defaults(func=cmd_synth)

    check = data.add_parser("validate", help="validate a data root (exit 0: passed, 1: rejected)",
                            description="Validate a data root as a retrain does. The rules are ValidationConfig's "
                                        "fields; --config reads a retrain YAML's validation section.")
    check.add_argument("data", help="data root in any supported layout")
    check.add_argument("--report", type=Path, help="write the JSON report (every row, the verdict) here")
    check.add_argument("--docs", type=Path, help="write Great Expectations Data Docs (HTML) into this folder")
    check.add_argument("--show", type=int, default=20, help="print at most this many problem rows "
                                                             "(default: %(default)s)")
    add_config_file_options(check)
    add_config_options(check, ValidationConfig)
    check.set_defaults(func=cmd_validate)

    batches = data.add_parser("batches", help="each batch's verdict (accepted, rejected, readmitted) in the store",
                              description="List the verdicts a retrain recorded for the batches of DATA, oldest "
                                          "first, with the reasons of each rejection.")
    readmit = data.add_parser("readmit", help="accept a rejected batch as it is from the next retrain on",
                              description="Record that an operator accepts BATCH as it is: the next retrain "
                                          "includes it (its quarantined rows stay out). A corrected batch is "
                                          "better uploaded under a new batch id.")
    for p in (batches, readmit):
        p.add_argument("data", help="the data root, exactly as the retrain is given it (a folder or s3:// URI)")
        _add_store_arguments(p)
        p.set_defaults(func=cmd_batches)
    batches.add_argument("--json", action="store_true", help="print the verdict records as JSON")
    readmit.add_argument("batch", help="the batch id (the folder name under batches/)")
    readmit.add_argument("--note", required=True, help="why it is readmitted; kept with the verdict")

    fetch = data.add_parser("download", help="download a public data set (resumable, checksum-verified)")
    fetch.add_argument("dataset", choices=["pcam"], help="pcam: PatchCamelyon's HDF5 files from its Zenodo record")
    fetch.add_argument("dest", type=Path, help="folder to download into (an interrupted download resumes there)")
    fetch.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=["train", "valid", "test"],
                       help="which splits to fetch (default: all three)")
    fetch.add_argument("--url", help="URL template with {name} (default: the Zenodo record); for mirrors")
    fetch.set_defaults(func=cmd_download)
    return parser


# A folder we may not write, a read-only mount, a full disk or quota: the machine, not the arguments.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and kind of one of our errors; None for a bug (shown as a traceback)."""
    from histo_core.data.sources import DataSourceError
    from histo_core.batch_verdicts import VerdictError
    from histo_core.errors import CheckpointError, DeviceUnavailableError, RunGuardError, UnservableVersionError
    from histo_core.registry import RegistryStateError
    from histo_core.split import SplitError
    from histo_core.validation import DataValidationError

    if isinstance(exc, CheckpointError):  # a file given as a checkpoint that is not one: the argument is wrong
        return USAGE, "usage: not a usable checkpoint"
    if isinstance(exc, (DataValidationError, DataSourceError, SplitError, UnservableVersionError)):
        return REJECTED, "the data or model was rejected"
    if isinstance(exc, (StoreError, DownloadError, ConnectionError, TimeoutError, DeviceUnavailableError, RunGuardError)):
        return ENVIRONMENT, "environment (store, network, device)"
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return ENVIRONMENT, "environment (permissions, disk space)"
    if isinstance(exc, (ValueError, FileExistsError, FileNotFoundError, RegistryStateError, VerdictError)):
        return USAGE, "usage"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        known = exit_code(exc)
        if known is None:
            raise
        # Our errors say what is wrong and what to do; a traceback would bury that.
        print(f"histo: error ({known[1]}): {exc}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    sys.exit(main())
