"""``histo train`` and ``histo evaluate``: the library's steps without an orchestrator."""

from __future__ import annotations

import os
import argparse
import sys
from pathlib import Path
from typing import Any

from histo_cli.checks import (OK, check_image_size, require_data_root, require_device, require_dir,
                              require_file)
from histo_cli.options import add_config_file_options, add_config_options, print_config, resolve_config
from histo_cli.progress import EpochBars, ProgressBar
from histo_core.atomic import atomic_write
from histo_core.config import EvalConfig, PredictConfig, SplitConfig, TrainConfig, ValidationConfig


def register(sub: argparse._SubParsersAction) -> None:
    """histo train, histo evaluate"""
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
    evaluate.add_argument("--adapt-to-data", action="store_true",
                          help=PredictConfig.model_fields["adapt_to_data"].description)
    evaluate.add_argument("--device", default=TrainConfig.model_fields["device"].default,
                          help=f"{TrainConfig.model_fields['device'].description} (default: %(default)s)")
    add_config_file_options(evaluate)
    add_config_options(evaluate, EvalConfig)
    evaluate.set_defaults(func=cmd_evaluate)


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
        import tempfile

        steps.load_partitions(split, out / "cache")  # decode once here, not in every rank
        steps.record_split(model, split)
        # torchrun's log folder (it makes one in the system's temporary folder and leaves
        # it there, one per run, when it is not given one): ours, removed afterwards.
        with tempfile.TemporaryDirectory(prefix="histo-torchrun-") as logs:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={args.nproc}", "--log-dir", logs,
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
    require_device(cfg.device)
    require_data_root(data)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the labelled images of DATA (any layout) with a checkpoint: metrics with
    DeLong and bootstrap CIs, calibration, and with --out the predictions and plots.

    With --split PART (a checkpoint written by histo train or a retrain, whose folder
    records its split), only that partition's images are scored, and the temperature and
    operating point are fitted on the validation images, as a retrain does. Without it they
    are fitted by cross-fitting on the scored images."""
    import json

    cfg = resolve_config(EvalConfig, args, section="evaluation")
    if args.print_config:
        print_config({"evaluation": cfg})
        return OK
    if args.checkpoint is None:
        raise ValueError("--checkpoint is required: the weights file to evaluate (best.pt, or a version's model.pt)")
    require_file(args.checkpoint, "checkpoint")
    require_dir(args.data, "data folder")
    require_device(args.device)
    from histo_core import steps
    from histo_core.checkpoint import read_checkpoint
    from histo_core.data.sources import DataSourceError, list_images

    read_checkpoint(args.checkpoint)  # a bad file fails now, not after the scan
    table = list_images(args.data)
    table = table[table["labelled"] & table["label"].isin(["0", "1"]) & (table["path"] != "")]
    if table.empty:
        raise DataSourceError(f"{args.data}: no labelled images to evaluate on")
    check_image_size(table["path"], args.data)
    partition = _partitions(args, steps.training_split(args.checkpoint), table)
    bar = ProgressBar("scoring")
    scored = len(table[partition.isin({args.split, "val"})]) if args.split and partition is not None else len(table)
    try:
        metrics, predictions = steps.evaluate_images(
            args.checkpoint, table, cfg, args.device, partition, args.split, root=os.path.realpath(args.data),
            progress=lambda done: bar(done, scored), adapt=args.adapt_to_data)
    finally:
        bar.close()
    metrics["data"] = str(args.data)
    first_error = metrics["first_error"]
    print(f"AUC {metrics['auc']:.4f} (DeLong 95% CI {metrics['auc_ci_low']:.4f}-{metrics['auc_ci_high']:.4f}, "
          f"bootstrap {metrics['auc_bootstrap_ci_low']:.4f}-{metrics['auc_bootstrap_ci_high']:.4f})  "
          f"on {metrics['n']} images{' with TTA' if cfg.tta else ''}"
          + (", BatchNorm statistics adapted to them" if args.adapt_to_data else "")
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
        args.out.mkdir(parents=True, exist_ok=True)
        steps.write_predictions(predictions, args.out / "predictions.csv",
                                {n: args.out / f"{n}.png" for n in ("roc", "pr", "reliability")},
                                {"challenger": op["threshold"]})
        atomic_write(args.out / "metrics.json",
                     lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n"))
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
