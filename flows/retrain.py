"""The retrain flow: validate -> split -> train -> evaluate -> promote -> upload."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from histo_core import steps
from histo_core.config import RetrainConfig
from histo_core.layout import Workdir
from histo_tasks.retrain import (evaluate_models, promote_model, split_data, train_model, upload_artifacts,
                           validate_data)


def _run_id() -> str:
    """Sortable and readable: UTC time plus the flow run's name."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{flow_run.get_name() or 'local'}"


def _fresh_unless(task: Task, done: Path) -> Task:
    """The task, told to recompute (and re-cache) when its output folder's completion file
    is missing: a cache record never outlives the files it stands for."""
    return task.with_options(refresh_cache=not done.is_file())


def _summary(validation: dict[str, Any], history: list[dict[str, Any]], decision: dict[str, Any],
             store_uri: str) -> str:
    best = min(history, key=lambda r: r["val_loss"])
    champion_auc = decision["champion_auc"]
    quarantined = [r for r in validation["rows"] if r["status"] == "quarantined"]
    lines = [
        f"## Retrain: **{decision['outcome']}** ({decision['version']})",
        f"- data: {validation['counts']}, labels {validation['labels']}",
        f"- training: {len(history)} epochs, best val loss {best['val_loss']:.4f} "
        f"(epoch {best['epoch']}, val AUC {best['val_auc']:.4f})",
        f"- hold-out AUC: challenger {decision['challenger_auc']:.4f}, champion "
        + (f"{champion_auc:.4f} ({decision['previous_champion']})" if champion_auc is not None else "none"),
        "- why: " + "; ".join(decision["reasons"]),
        f"- champion before: {decision['previous_champion'] or 'none'}; after: {decision['champion']}",
        f"- artifacts: {store_uri}",
    ]
    if validation.get("drift") and validation["drift"]["warning"]:
        lines.append(f"- **colour drift** in batch {validation['drift']['batch']}: "
                     f"{validation['drift']['score']:.2f} SD (threshold {validation['drift']['threshold']})")
    if quarantined:
        lines += ["", f"### Quarantined rows ({len(quarantined)})", "", "| id | reason |", "|---|---|"]
        lines += [f"| {r['id']} | {r['reason']} |" for r in quarantined[:50]]
    return "\n".join(lines)


@flow(name="retrain", log_prints=True)
def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Retrain on ``config.data`` and promote the challenger if it beats the champion."""
    logger = get_run_logger()
    run_id = _run_id()
    work = Workdir(Path(config.workdir).expanduser().resolve())
    run = work.run(run_id)
    logger.info("run %s: data %s -> store %s", run_id, config.data, config.store.uri)
    steps.record_config(run, config)

    # Each step's output folder is computed once, here, and is the step's cache key (tasks.retrain).
    dataset = steps.dataset_dir(work, config.data, config.validation) or work.dataset(f"remote-{run_id}")
    validate_data(config.data, str(dataset.root), str(work.root), config.validation, config.store, run_id)
    split = steps.split_dir(dataset, config.split)
    _fresh_unless(split_data, split.csv)(str(dataset.root), str(split.root), config.split)
    model = steps.model_dir(work, split, config.train)
    _fresh_unless(train_model, model.training)(str(split.root), str(model.root), str(work.root), config.train)
    evaluate_models(str(split.root), str(model.root), str(run.root), str(work.root), config.store,
                    config.model_name, config.evaluation, config.train.device)
    promote_model(str(run.root), str(model.root), str(split.root), config.store, config.model_name, config.gate)
    store_uri = upload_artifacts(str(run.root), str(split.root), str(model.root), config.store, run_id)

    decision = json.loads(run.decision.read_text())
    validation = json.loads(dataset.validation.read_text())
    history = json.loads(model.history.read_text())
    summary = _summary(validation, history, decision, store_uri)
    print(summary)
    create_markdown_artifact(summary, key="retrain-summary", description="Retrain decision")
    create_table_artifact(history, key="retrain-epochs", description="Per-epoch training metrics")
    version_uri = f"{config.store.uri.rstrip('/')}/models/{config.model_name}/versions/{decision['version']}"
    links = {Path(name).stem.replace("_", "-"): f"{version_uri}/{name}"
             for name in run.version_files(model) if name.endswith((".md", ".png"))}
    links["data-docs"] = f"{store_uri}/data_docs/index.html"
    for name, link in links.items():
        create_link_artifact(link, link_text=name, key=f"retrain-{name}", description=f"Stored {name}")
    return {"run_id": run_id, "flow_run_id": flow_run.get_id(), "run_dir": str(run.root),
            "artifacts": store_uri, **decision}
