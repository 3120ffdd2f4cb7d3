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
from histo_core.layout import DatasetDir, ModelDir, RunDir, SplitDir, Workdir
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
    folder = steps.dataset_dir(Workdir(Path(p["workdir"])), p["data"], p["cfg"])
    return f"dataset-{folder.root.name}" if folder else None  # remote data: not cached


def _split_key(context: Any, p: dict[str, Any]) -> str:
    manifest = DatasetDir(Path(p["dataset"])).manifest
    return f"split-dir-{steps.content_key(sha256_file(manifest), p['cfg'].model_dump())}"


def _train_key(context: Any, p: dict[str, Any]) -> str:
    return f"model-{steps.model_dir(Workdir(Path(p['workdir'])), SplitDir(Path(p['split'])), p['cfg']).root.name}"


@task(name="validate-data", retries=2, retry_delay_seconds=exponential_backoff(5),
      retry_condition_fn=_worth_retrying, cache_key_fn=_validate_key, cache_expiration=CACHE_FOR,
      persist_result=True)
def validate_data(data: str, workdir: str, cfg: ValidationConfig, store: StoreConfig, run_id: str) -> str:
    """Manifest + GX validation into a data set folder; fails the run with the data set's
    problems if it is rejected.

    Retried because an ``s3://`` data root is listed and fetched over the network; a
    rejected data set fails the same way every time and is not retried.
    """
    logger = get_run_logger()
    work = Workdir(Path(workdir))
    dataset = steps.dataset_dir(work, data, cfg) or work.dataset(f"remote-{run_id}")
    try:
        return str(steps.validate(data, dataset, cfg, work.manifests, store=store).root)
    finally:
        if dataset.validation.exists():
            report = json.loads(dataset.validation.read_text())
            logger.info("data %s: %s; labels %s", report["verdict"], report["counts"], report["labels"])
            if report["drift"]:
                (logger.warning if report["drift"]["warning"] else logger.info)("colour drift: %s", report["drift"])
            for row in [r for r in report["rows"] if r["status"] == "quarantined"][:10]:
                logger.warning("quarantined %s: %s", row["id"], row["reason"])


@task(name="split-data", cache_key_fn=_split_key, cache_expiration=CACHE_FOR, persist_result=True)
def split_data(dataset: str, cfg: SplitConfig) -> str:
    return str(steps.split(DatasetDir(Path(dataset)), cfg).root)


# A retry (or a re-run of a failed flow) resumes from last.pt in the same model folder.
@task(name="train-model", retries=1, cache_key_fn=_train_key, cache_expiration=CACHE_FOR, persist_result=True)
def train_model(split: str, workdir: str, cfg: TrainConfig) -> str:
    from histo_core.train import format_epoch

    logger = get_run_logger()
    work, split_dir = Workdir(Path(workdir)), SplitDir(Path(split))
    model = steps.model_dir(work, split_dir, cfg)
    steps.train(split_dir, model, work.cache, cfg, lambda r: logger.info(format_epoch(r, cfg.epochs)))
    return str(model.root)


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
