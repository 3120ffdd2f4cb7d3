"""One Prefect task per retrain step, in run order. Each passes file paths, not data,
so Prefect can retry a step, show its inputs, and a re-run can pick up the files.

Split and training are cached by their **output folder**: the flow computes that folder
once (``steps.split_dir``, ``steps.model_dir``: the workdir plus a hash of the inputs'
content and the config) and passes it as ``out``; the cache key is a hash of its
absolute path. A cached result can therefore only ever name this workdir's folder for
these inputs, and the flow refreshes the cache whenever that folder's completion file is
missing, so a deleted or moved workdir costs a recomputation, never an error.

Validation is not cached by Prefect: its verdict also depends on the batch verdicts
kept in the store, which an operator can change without touching the data. The step
reuses its own earlier report when the manifest, thresholds and verdicts are unchanged,
which costs one ``stat`` per file.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from histo_core import steps
from histo_core.config import EvalConfig, GateConfig, SplitConfig, StoreConfig, TrainConfig, ValidationConfig
from histo_core.data.sources import DataSourceError
from histo_core.errors import DependencyError
from histo_core.layout import DatasetDir, ModelDir, RunDir, SplitDir, Workdir
from histo_core.validation import DataValidationError
from histo_tasks.retries import retry_unless

CACHE_FOR = timedelta(days=30)


def output_folder_key(context: Any, parameters: dict[str, Any]) -> str:
    """The cache key of a step that writes into ``parameters["out"]``: the task's name and
    a hash of that folder's absolute path (workdir + content key of the inputs)."""
    folder = str(Path(parameters["out"]).expanduser().resolve())
    return f"{context.task.name}-{steps.content_key(folder)}"


@task(name="validate-data", retries=2, retry_delay_seconds=exponential_backoff(5),
      retry_condition_fn=retry_unless(DataValidationError, DataSourceError, DependencyError),
      cache_policy=NO_CACHE)
def validate_data(data: str, out: str, workdir: str, cfg: ValidationConfig, store: StoreConfig,
                  run_id: str, model_name: str | None = None) -> dict[str, Any]:
    """Manifest + GX validation into a data set folder; fails the run with the data set's
    problems if it is rejected.

    Retried because an ``s3://`` data root is listed and fetched over the network; a
    rejected data set fails the same way every time and is not retried, nor is an
    interpreter that cannot import GX.
    """
    logger = get_run_logger()
    work, dataset = Workdir(Path(workdir)), DatasetDir(Path(out))
    before = dataset.validation.stat().st_mtime_ns if dataset.validation.exists() else None
    try:
        steps.validate(data, dataset, cfg, work.manifests, store=store, model_name=model_name)
    finally:
        if dataset.validation.exists():
            report = json.loads(dataset.validation.read_text())
            logger.info("data %s: %s; labels %s", report["verdict"], report["counts"], report["labels"])
            if report["drift"]:
                (logger.warning if report["drift"]["warning"] else logger.info)("colour drift: %s", report["drift"])
            for batch, verdict in report.get("batches", {}).items():
                if verdict["verdict"] in ("rejected", "held"):
                    logger.warning("batch %s %s (left out): %s", batch, verdict["verdict"],
                                   "; ".join(verdict["reasons"]))
            quarantined = [r for r in report["rows"] if r["status"] == "quarantined"]
            for row in quarantined[:10]:
                logger.warning("quarantined %r: %s", row["id"][:80], row["reason"])  # repr: one line, however odd
            if len(quarantined) > 10:
                logger.warning("... and %d more quarantined rows: every row with its reason is in %s",
                               len(quarantined) - 10, dataset.validation)
    # A report older than this call was reused: its verdicts and drift were announced when written.
    fresh = dataset.validation.stat().st_mtime_ns != before
    return {"dataset": out, "judged": {b: v for b, v in report.get("batches", {}).items() if fresh and v["new"]},
            "drift": report["drift"] if fresh else None}


@task(name="split-data", cache_key_fn=output_folder_key, cache_expiration=CACHE_FOR, persist_result=True)
def split_data(dataset: str, out: str, cfg: SplitConfig) -> str:
    """Writes ``out`` (``steps.split_dir`` of the data set and config)."""
    written = steps.split(DatasetDir(Path(dataset)), cfg).root
    if written.resolve() != Path(out).resolve():
        raise ValueError(f"split wrote {written}, not the folder the flow expected ({out})")
    return out


# A retry (or a re-run of a failed flow) resumes from last.pt in the same model folder.
@task(name="train-model", retries=1, cache_key_fn=output_folder_key, cache_expiration=CACHE_FOR,
      persist_result=True)
def train_model(split: str, out: str, workdir: str, cfg: TrainConfig) -> str:
    """Trains into ``out`` (``steps.model_dir`` of the split and config)."""
    from histo_core.train import format_epoch

    logger = get_run_logger()
    with _library_log_in_run():
        steps.train(SplitDir(Path(split)), ModelDir(Path(out)), Workdir(Path(workdir)).cache, cfg,
                    lambda r: logger.info(format_epoch(r, cfg.epochs)))
    return out


@contextlib.contextmanager
def _library_log_in_run() -> Iterator[None]:
    """The library logs through ``logging`` (it never imports Prefect); while a step runs,
    its records (resuming from last.pt, early stop, a config mismatch) go to the run's log."""
    from prefect.logging.handlers import APILogHandler

    library = logging.getLogger("histo_core")
    handler, level = APILogHandler(), library.level
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)


@task(name="evaluate-models", retries=2, retry_delay_seconds=exponential_backoff(5), cache_policy=NO_CACHE)
def evaluate_models(split: str, model: str, run: str, workdir: str,
                    store: StoreConfig, model_name: str, cfg: EvalConfig, device: str) -> str:
    run_dir = steps.evaluate(SplitDir(Path(split)), ModelDir(Path(model)), RunDir(Path(run)),
                             Workdir(Path(workdir)).cache, store, model_name, cfg, device)
    report = json.loads(run_dir.evaluation.read_text())
    logger = get_run_logger()
    logger.info("challenger on hold-out: %s", report["challenger"])
    logger.info("champion %s on hold-out: %s", report["champion_version"] or "(none)", report["champion"])
    if report["comparison"]:
        logger.info("paired DeLong comparison: %s", report["comparison"])
    return str(run_dir.root)


@task(name="promote-model", retries=2, retry_delay_seconds=exponential_backoff(5), cache_policy=NO_CACHE)
def promote_model(run: str, model: str, split: str, store: StoreConfig, model_name: str, cfg: GateConfig) -> str:
    run_dir = steps.promote(RunDir(Path(run)), ModelDir(Path(model)), SplitDir(Path(split)), store, model_name, cfg)
    decision = json.loads(run_dir.decision.read_text())
    get_run_logger().info("decision: %s %s (%s)", decision["outcome"], decision["version"],
                          "; ".join(decision["reasons"]))
    return str(run_dir.decision)


@task(name="upload-artifacts", retries=3, retry_delay_seconds=exponential_backoff(2), cache_policy=NO_CACHE)
def upload_artifacts(run: str, split: str, model: str, store: StoreConfig, run_id: str) -> str:
    return steps.upload(RunDir(Path(run)), SplitDir(Path(split)), ModelDir(Path(model)), store, run_id)
