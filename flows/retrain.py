"""The retrain flow: validate -> split -> train -> evaluate -> promote -> upload."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.states import Cancelled, Failed, State
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from histo_core import run_guard, steps
from histo_core.config import RetrainConfig, with_overrides
from histo_core.batch_verdicts import USABLE
from histo_core.layout import DatasetDir, RunDir, Workdir
from histo_core.storage import open_store, probe_writable
from histo_core.validation import DataValidationError
from histo_tasks import events, run_control
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
    best = steps.best_epoch(history)
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
    lines += _left_out_lines(validation)
    if quarantined:
        lines += ["", f"### Quarantined rows ({len(quarantined)})", "", "| id | reason |", "|---|---|"]
        lines += [f"| {_cell(r['id'])} | {_cell(r['reason'])} |" for r in quarantined[:50]]
    return "\n".join(lines)


def _left_out_lines(validation: dict[str, Any]) -> list[str]:
    """Every batch the data set leaves out, every run: loud until an operator acts."""
    left_out = {b: v for b, v in validation.get("batches", {}).items() if v["verdict"] not in USABLE}
    if not left_out:
        return []
    return ["", f"### Batches left out ({len(left_out)}; `histo data batches` lists them, `histo data readmit` "
                "takes one back)", "", "| batch | verdict | since | reasons |", "|---|---|---|---|"] + [
        f"| {_cell(b)} | {v['verdict']} | {v.get('decided', '')} | {_cell('; '.join(v['reasons']))} |"
        for b, v in left_out.items()]


def _cell(text: object) -> str:
    """Data-derived text (ids, reasons) as one inert markdown table cell: no markup, no
    line or column breaks, at most 300 characters."""
    flat = " ".join(str(text).split())[:300]
    return (flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\\", "\\\\")
            .replace("|", "\\|").replace("`", "\\`").replace("[", "\\[").replace("]", "\\]"))


def _data_rejected(config: RetrainConfig, run: RunDir, dataset: DatasetDir, run_id: str, error: Exception) -> State:
    """A rejected data set is an expected outcome: upload what the run found, say it in one
    paragraph (what, which batches, where the report is), and end the run Failed without
    a traceback."""
    where = steps.upload_failed(run, dataset, config.store, run_id)
    validation = json.loads(dataset.validation.read_text()) if dataset.validation.is_file() else {}
    left_out = {b: v for b, v in validation.get("batches", {}).items() if v["verdict"] not in USABLE}
    message = (f"Retrain {run_id} stopped: the data set under {config.data} was rejected ({error}). "
               + ("Batches left out before that: " + ", ".join(f"{b} ({v['verdict']})" for b, v in left_out.items())
                  + ". " if left_out else "")
               + f"Every row's status and reason: {where}/validation.json; Data Docs: {where}/data_docs/index.html. "
               "Nothing was trained or promoted; the champion is unchanged.")
    create_markdown_artifact("\n".join([f"## Retrain: **data rejected** ({run_id})", "", message,
                                        *_left_out_lines(validation)]),
                             key="retrain-summary", description="Retrain decision")
    create_link_artifact(f"{where}/validation.json", link_text="validation report", key="retrain-validation",
                         description="Why the data set was rejected")
    get_run_logger().error(message)
    return Failed(message=message)


def _announce_failure(flow: Any, flow_run: Any, state: State) -> None:
    """on_failure hook: every failed run, expected or not, emits ``histo.retrain.failed``."""
    config = flow_run.parameters.get("config") or {}
    data = config.get("data", "") if isinstance(config, dict) else getattr(config, "data", "")
    events.emit(events.FAILED, data, {"flow_run_id": str(flow_run.id), "flow_run": flow_run.name,
                                      "message": (state.message or "")[:2000]})


def _device_key(name: str) -> str:
    """The device this run will train on, as the run guard names it (cuda:N for a GPU)."""
    import torch

    from histo_core.inference import pick_device

    device = pick_device(name)
    if device.type != "cuda":
        return device.type
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _report_wait(key: str, holder: dict[str, Any], waited: float) -> None:
    who = (f"flow run {holder.get('flow_run')} (pid {holder.get('pid')} on {holder.get('host')}, "
           f"since {holder.get('since')})") if holder else "another run"
    get_run_logger().info("waiting %.0f s for %s: held by %s", waited, key, who)


def _gave_up(config: RetrainConfig, attempts: int) -> State:
    """A run that crashed ``max_attempts`` times stops being retried, loudly."""
    message = (f"Retrain gave up: this flow run has started {attempts} times (max_attempts "
               f"{config.operations.max_attempts}); each earlier attempt crashed. Nothing was promoted; "
               "look at the earlier attempts' logs (out of memory? a dying worker?) before running it again.")
    events.emit(events.GAVE_UP, config.data, {"flow_run_id": str(flow_run.get_id()), "flow_run": flow_run.get_name(),
                                              "attempts": attempts, "message": message})
    get_run_logger().error(message)
    return Failed(message=message)


@flow(name="retrain", log_prints=True, on_failure=[_announce_failure])
def retrain(config: RetrainConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """Retrain on ``config.data`` and promote the challenger if it beats the champion.

    ``overrides``: fields to change for this run only, merged section by section onto
    ``config`` (``{"train": {"epochs": 50, "seed": 5}}``): a deployment's config stays
    whole, and a run from the CLI or the UI names only what it changes."""
    config = with_overrides(config, overrides)
    logger = get_run_logger()
    attempts = run_control.run_count()
    if attempts > config.operations.max_attempts:
        return _gave_up(config, attempts)
    holder = {"flow_run": flow_run.get_name(), "flow_run_id": str(flow_run.get_id())}
    with run_guard.hold(run_guard.lock_keys(config.data, _device_key(config.train.device)),
                        Path(config.operations.lock_dir).expanduser(), holder, on_wait=_report_wait):
        if (newer := run_control.superseded_by()) is not None:
            message = (f"Superseded by flow run {newer.name} ({newer.id}), due later with the same parameters: "
                       "only the newest of a backlog of identical runs works.")
            logger.info(message)
            return Cancelled(message=message)
        return _retrain(config, attempts)


def _retrain(config: RetrainConfig, attempts: int) -> dict[str, Any] | State:
    """The steps, under the run guard."""
    logger = get_run_logger()
    run_id = _run_id()
    if attempts > 1:
        logger.warning("attempt %d of %d: resuming (cached steps are reused, training resumes from last.pt)",
                       attempts, config.operations.max_attempts)
    work = Workdir(Path(config.workdir).expanduser().resolve())
    run = work.run(run_id)
    logger.info("run %s: data %s -> store %s", run_id, config.data, config.store.uri)
    steps.record_config(run, config)
    probe_writable(open_store(config.store))  # a store it cannot write fails now, not after training

    # Each step's output folder is computed once, here, and is the step's cache key (tasks.retrain).
    dataset = steps.dataset_dir(work, config.data, config.validation) or work.dataset(f"remote-{run_id}")
    reference = {"run_id": run_id, "flow_run_id": str(flow_run.get_id())}
    try:
        validated = validate_data(config.data, str(dataset.root), str(work.root), config.validation, config.store,
                                  run_id, config.model_name)
    except DataValidationError as exc:
        return _data_rejected(config, run, dataset, run_id, exc)
    events.emit_validation_events(config.data, reference, validated["judged"], validated["drift"])
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
    events.emit_decision_event(config.data, reference, decision)
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
