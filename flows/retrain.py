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
from histo_tasks.retrain import (evaluate_models, promote_model, split_data, train_model, upload_artifacts,
                           validate_data)


def _run_id() -> str:
    """Sortable and readable: UTC time plus the flow run's name."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{flow_run.get_name() or 'local'}"


def _fresh_unless(task: Task, output: Path | None) -> Task:
    """The task, told to recompute (and re-cache) if the output its cache points to is gone."""
    return task.with_options(refresh_cache=output is None or not output.exists())


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
    workdir = Path(config.workdir).expanduser().resolve()
    run_dir = workdir / "runs" / run_id
    logger.info("run %s: data %s -> store %s", run_id, config.data, config.store.uri)
    steps.record_config(run_dir, config)

    data_dir = steps.dataset_dir(workdir, config.data, config.validation)
    manifest = _fresh_unless(validate_data, data_dir and data_dir / "validation.json")(
        config.data, str(workdir), config.validation, config.store, run_id)
    split = _fresh_unless(split_data, steps.split_path(Path(manifest), config.split))(manifest, config.split)
    model_dir = steps.model_dir(workdir, Path(split), config.train)
    challenger = _fresh_unless(train_model, model_dir / "best.pt")(split, str(workdir), config.train)
    evaluation = evaluate_models(split, challenger, str(run_dir), str(workdir), config.store,
                                 config.model_name, config.evaluation, config.train.device)
    decision_path = promote_model(evaluation, challenger, split, str(run_dir), config.store,
                                  config.model_name, config.gate)
    store_uri = upload_artifacts(str(run_dir), split, challenger, config.store, run_id)

    decision = json.loads(Path(decision_path).read_text())
    validation = json.loads((Path(manifest).parent / "validation.json").read_text())
    history = json.loads((Path(challenger).parent / "history.json").read_text())
    summary = _summary(validation, history, decision, store_uri)
    print(summary)
    create_markdown_artifact(summary, key="retrain-summary", description="Retrain decision")
    create_table_artifact(history, key="retrain-epochs", description="Per-epoch training metrics")
    version_uri = f"{config.store.uri.rstrip('/')}/models/{config.model_name}/versions/{decision['version']}"
    for name, link in [("model-card", f"{version_uri}/model_card.md"), ("roc-plot", f"{version_uri}/roc.png"),
                       ("reliability-plot", f"{version_uri}/reliability.png"),
                       ("data-docs", f"{store_uri}/data_docs/index.html")]:
        create_link_artifact(link, link_text=name, key=f"retrain-{name}", description=f"Stored {name}")
    return {"run_id": run_id, "flow_run_id": flow_run.get_id(), "run_dir": str(run_dir),
            "artifacts": store_uri, **decision}
