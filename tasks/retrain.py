"""One Prefect task per retrain step, in run order. Each passes file paths, not data,
so Prefect can retry a step, show its inputs, and a re-run can pick up the files.

Validation, split and training are cached on content: the key of each is a hash of what
it reads (the data files' sizes and mtimes, the manifest, the split) and its config, and
their outputs live in folders named by that key. A re-run on unchanged data therefore
skips them, and a run that failed later (say, in evaluation) re-runs from there.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from histo_core import steps
from histo_core.config import EvalConfig, GateConfig, SplitConfig, StoreConfig, TrainConfig, ValidationConfig
from histo_core.data.sources import DataSourceError
from histo_core.storage import sha256_file
from histo_core.validation import DataValidationError

CACHE_FOR = timedelta(days=30)


def _worth_retrying(task: object, task_run: object, state: State) -> bool:
    """Retry network trouble; never a data set that validation rejected (it fails the same way)."""
    try:
        state.result()
    except (DataValidationError, DataSourceError):
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


def _validate_key(context: Any, p: dict[str, Any]) -> str | None:
    folder = steps.dataset_dir(Path(p["workdir"]), p["data"], p["cfg"])
    return f"validate-{folder.name}" if folder else None  # remote data: not cached


def _split_key(context: Any, p: dict[str, Any]) -> str:
    return f"split-{steps.content_key(sha256_file(p['manifest_csv']), p['cfg'].model_dump())}"


def _train_key(context: Any, p: dict[str, Any]) -> str:
    return f"train-{steps.model_dir(Path(p['workdir']), Path(p['split_csv']), p['cfg']).name}"


@task(name="validate-data", retries=2, retry_delay_seconds=exponential_backoff(5),
      retry_condition_fn=_worth_retrying, cache_key_fn=_validate_key, cache_expiration=CACHE_FOR,
      persist_result=True)
def validate_data(data: str, workdir: str, cfg: ValidationConfig, store: StoreConfig, run_id: str) -> str:
    """Manifest + GX validation; fails the run with the data set problems if rejected.

    Retried because an ``s3://`` data root is listed and fetched over the network; a
    rejected data set fails the same way every time and is not retried.
    """
    logger = get_run_logger()
    out = steps.dataset_dir(Path(workdir), data, cfg) or Path(workdir) / "datasets" / f"remote-{run_id}"
    try:
        return str(steps.validate(data, out, cfg, Path(workdir) / "manifests", store=store))
    finally:
        report_path = out / "validation.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            logger.info("data %s: %s; labels %s", report["verdict"], report["counts"], report["labels"])
            if report["drift"]:
                (logger.warning if report["drift"]["warning"] else logger.info)("colour drift: %s", report["drift"])
            for row in [r for r in report["rows"] if r["status"] == "quarantined"][:10]:
                logger.warning("quarantined %s: %s", row["id"], row["reason"])


@task(name="split-data", cache_key_fn=_split_key, cache_expiration=CACHE_FOR, persist_result=True)
def split_data(manifest_csv: str, cfg: SplitConfig) -> str:
    return str(steps.split(Path(manifest_csv), cfg))


# A retry (or a re-run of a failed flow) resumes from last.pt in the same model folder.
@task(name="train-model", retries=1, cache_key_fn=_train_key, cache_expiration=CACHE_FOR, persist_result=True)
def train_model(split_csv: str, workdir: str, cfg: TrainConfig) -> str:
    logger = get_run_logger()

    def log_epoch(r: dict[str, float]) -> None:
        logger.info("epoch %d/%d  train loss %.4f  val loss %.4f  val AUC %.4f  %.0f img/s%s",
                    r["epoch"], cfg.epochs, r["train_loss"], r["val_loss"], r["val_auc"],
                    r["images_per_s"], "  (best so far, saved)" if r["improved"] else "")

    out = steps.model_dir(Path(workdir), Path(split_csv), cfg)
    return str(steps.train(Path(split_csv), out, Path(workdir) / "cache", cfg, log_epoch))


@task(name="evaluate-models", retries=2, retry_delay_seconds=exponential_backoff(5), cache_policy=NO_CACHE)
def evaluate_models(split_csv: str, challenger: str, run_dir: str, workdir: str,
                    store: StoreConfig, model_name: str, cfg: EvalConfig, device: str) -> str:
    path = steps.evaluate(Path(split_csv), Path(challenger), Path(run_dir), Path(workdir) / "cache",
                          store, model_name, cfg, device)
    report = json.loads(path.read_text())
    logger = get_run_logger()
    logger.info("challenger on hold-out: %s", report["challenger"])
    logger.info("champion %s on hold-out: %s", report["champion_version"] or "(none)", report["champion"])
    if report["comparison"]:
        logger.info("paired DeLong comparison: %s", report["comparison"])
    return str(path)


@task(name="promote-model", retries=2, retry_delay_seconds=exponential_backoff(5), cache_policy=NO_CACHE)
def promote_model(evaluation_json: str, challenger: str, split_csv: str, run_dir: str, store: StoreConfig,
                  model_name: str, cfg: GateConfig) -> str:
    path = steps.promote(Path(evaluation_json), Path(challenger), Path(split_csv), Path(run_dir), store,
                         model_name, cfg)
    decision = json.loads(path.read_text())
    get_run_logger().info("decision: %s %s (%s)", decision["outcome"], decision["version"],
                          "; ".join(decision["reasons"]))
    return str(path)


@task(name="upload-artifacts", retries=3, retry_delay_seconds=exponential_backoff(2), cache_policy=NO_CACHE)
def upload_artifacts(run_dir: str, split_csv: str, challenger: str, store: StoreConfig, run_id: str) -> str:
    return steps.upload(Path(run_dir), Path(split_csv), Path(challenger), store, run_id)
