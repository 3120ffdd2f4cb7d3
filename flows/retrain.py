"""The retrain flow: validate -> split -> train -> evaluate -> promote -> upload."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from histo_core import steps
from histo_core.config import RetrainConfig
from tasks.retrain import (evaluate_models, promote_model, split_data, train_model, upload_artifacts,
                           validate_data)


def _run_id() -> str:
    """Sortable and readable: UTC time plus the flow run's name."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{flow_run.get_name() or 'local'}"


def _summary(run_dir: Path, decision: dict[str, Any], store_uri: str) -> str:
    validation = json.loads((run_dir / "validation.json").read_text())
    history = json.loads((run_dir / "train" / "history.json").read_text())
    best = min(history, key=lambda r: r["val_loss"])
    champion_auc = decision["champion_auc"]
    return "\n".join([
        f"## Retrain: **{decision['outcome']}** ({decision['version']})",
        f"- data: {validation['counts']}, labels {validation['labels']}",
        f"- training: {len(history)} epochs, best val loss {best['val_loss']:.4f} "
        f"(epoch {best['epoch']}, val AUC {best['val_auc']:.4f})",
        f"- hold-out AUC: challenger {decision['challenger_auc']:.4f}, champion "
        + (f"{champion_auc:.4f} ({decision['previous_champion']})" if champion_auc is not None else "none"),
        "- why: " + "; ".join(decision["reasons"]),
        f"- champion now: {decision['champion']}",
        f"- artifacts: {store_uri}",
    ])


@flow(name="retrain", log_prints=True)
def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Retrain on ``config.data`` and promote the challenger if it beats the champion."""
    logger = get_run_logger()
    run_id = _run_id()
    workdir = Path(config.workdir).expanduser().resolve()
    run_dir, cache_dir = workdir / "runs" / run_id, workdir / "cache"
    logger.info("run %s: data %s -> store %s", run_id, config.data, config.store.uri)
    steps.record_config(run_dir, config)

    manifest = validate_data(config.data, str(run_dir), str(workdir / "manifests"), config.validation,
                             config.store)
    split = split_data(manifest, str(run_dir), config.split)
    challenger = train_model(split, str(run_dir), str(cache_dir), config.train)
    evaluation = evaluate_models(split, challenger, str(run_dir), str(cache_dir), config.store,
                                 config.model_name, config.train.device)
    decision_path = promote_model(evaluation, challenger, str(run_dir), config.store, config.model_name,
                                  config.gate)
    store_uri = upload_artifacts(str(run_dir), config.store, run_id)

    decision = json.loads(Path(decision_path).read_text())
    summary = _summary(run_dir, decision, store_uri)
    print(summary)
    create_markdown_artifact(summary, key="retrain-summary", description="Retrain decision")
    history = json.loads((run_dir / "train" / "history.json").read_text())
    create_table_artifact(history, key="retrain-epochs", description="Per-epoch training metrics")
    return {"run_id": run_id, "run_dir": str(run_dir), "artifacts": store_uri, **decision}
