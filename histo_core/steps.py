"""The retrain steps as functions of files, in the order a run performs them.

Each step reads the files of the step before from the run folder, writes its own and
returns their path, so an orchestrator can pass small references between steps, retry
one, or run it again later; and each step runs without any orchestrator in a test or a
notebook. The Prefect tasks in ``tasks/`` are one-line wrappers over these.

    validate -> manifest.csv, validation.json
    split    -> split.csv
    train    -> train/best.pt, train/last.pt, train/history.json
    evaluate -> evaluation.json (challenger and champion on the same test images)
    promote  -> decision.json (+ a registry version; the champion pointer maybe moved)
    upload   -> runs/<run-id>/ in the store
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from histo_core import __version__
from histo_core.config import GateConfig, SplitConfig, TrainConfig, ValidationConfig
from histo_core.data.cache import build_cache, open_cache
from histo_core.data.dataset import PatchDataset
from histo_core.data.manifest import build_manifest, manifest_hash
from histo_core.evaluate import evaluate_checkpoint
from histo_core.gate import decide
from histo_core.registry import WEIGHTS, Registry
from histo_core.split import assign_partitions
from histo_core.storage import ConflictError, open_store
from histo_core.train import EpochCallback, fit
from histo_core.validation import require_passed, validate_manifest

log = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def validate(data: str, run_dir: Path, cfg: ValidationConfig,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Build the manifest of ``data`` and validate it; raises if the data set is rejected.

    The report is written before raising, so a rejected run still leaves its reasons.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result = validate_manifest(build_manifest(data, progress=progress), cfg)
    result.rows.to_csv(run_dir / "manifest.csv", index=False)
    _write_json(run_dir / "validation.json", result.report())
    log.info("validation: %s", result.summary())
    require_passed(result)
    return run_dir / "manifest.csv"


def split(manifest_csv: Path, run_dir: Path, cfg: SplitConfig) -> Path:
    """Keep usable rows and assign each its content-hash partition."""
    rows = pd.read_csv(manifest_csv, dtype={"label": str, "id": str}, keep_default_na=False)
    usable = rows[rows["status"] != "quarantined"].copy()
    usable["label"] = usable["label"].astype(int)
    table = assign_partitions(usable[["id", "label", "path", "batch", "pixel_sha256"]], cfg)
    table.to_csv(run_dir / "split.csv", index=False)
    counts = table.groupby(["partition", "label"]).size().unstack(fill_value=0)
    log.info("split (rows by partition and label):\n%s", counts.to_string())
    return run_dir / "split.csv"


def load_partitions(split_csv: Path, cache_dir: Path, augment_train: bool = False) -> dict[str, PatchDataset]:
    """One dataset per partition, all reading one decoded cache of the split's rows."""
    table = pd.read_csv(split_csv, dtype={"id": str}, keep_default_na=False)
    pixels = open_cache(build_cache(table, cache_dir))
    labels = table["label"].to_numpy()
    return {name: PatchDataset(pixels, labels, np.flatnonzero(table["partition"] == name),
                               augment=augment_train and name == "train")
            for name in ("train", "val", "test")}


def train(split_csv: Path, run_dir: Path, cache_dir: Path, cfg: TrainConfig,
          on_epoch: EpochCallback | None = None) -> Path:
    """Train a challenger; returns its best-val-loss checkpoint."""
    parts = load_partitions(split_csv, cache_dir, augment_train=cfg.augment)
    return fit(parts["train"], parts["val"], cfg, run_dir / "train", on_epoch).best_checkpoint


def evaluate(split_csv: Path, challenger: Path, run_dir: Path, cache_dir: Path,
             store_uri: str, model_name: str, device: str = "auto") -> Path:
    """Score the challenger and the current champion (if any) on the same test partition."""
    test_set = load_partitions(split_csv, cache_dir)["test"]
    report: dict[str, Any] = {"challenger": evaluate_checkpoint(challenger, test_set, device),
                              "champion": None, "champion_version": None, "champion_etag": None}
    registry = Registry(open_store(store_uri), model_name)
    champion = registry.champion()
    if champion:
        weights = registry.download_weights(champion.version, run_dir / "champion" / WEIGHTS)
        report.update(champion=evaluate_checkpoint(weights, test_set, device),
                      champion_version=champion.version, champion_etag=champion.etag)
    return _write_json(run_dir / "evaluation.json", report)


def promote(evaluation_json: Path, challenger: Path, run_dir: Path, store_uri: str,
            model_name: str, cfg: GateConfig, data_hash: str) -> Path:
    """File the challenger as a version, apply the gate, and move the champion if it wins."""
    evaluation = json.loads(evaluation_json.read_text())
    challenger_auc = evaluation["challenger"]["auc"]
    champion_auc = evaluation["champion"]["auc"] if evaluation["champion"] else None
    decision = decide(challenger_auc, champion_auc, cfg)
    registry = Registry(open_store(store_uri), model_name)
    version = registry.new_version_id()
    files = {WEIGHTS: challenger, "evaluation.json": evaluation_json}
    history = challenger.parent / "history.json"
    if history.exists():
        files["history.json"] = history
    registry.publish_version(version, files, {
        "metrics": evaluation["challenger"], "data_manifest_hash": data_hash,
        "code_version": __version__, "gate": cfg.model_dump(), "decision": decision.to_dict()})
    outcome, reasons = "rejected", list(decision.reasons)
    if decision.promote:
        try:
            registry.set_champion(version, evaluation["champion_etag"], auc=challenger_auc)
            outcome = "promoted"
        except ConflictError as exc:
            outcome = "conflict"
            reasons.append(str(exc))
    registry.record_event(outcome, version, {"reasons": reasons,
                                             "previous_champion": evaluation["champion_version"]})
    champion = registry.champion()
    return _write_json(run_dir / "decision.json", {
        "outcome": outcome, "version": version, "reasons": reasons,
        "challenger_auc": challenger_auc, "champion_auc": champion_auc,
        "previous_champion": evaluation["champion_version"],
        "champion": champion.version if champion else None})


def upload(run_dir: Path, store_uri: str, run_id: str) -> str:
    """Copy the run's records (not caches or checkpoints: those live in the version) to the store."""
    store = open_store(store_uri)
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".csv", ".md", ".html", ".png", ".log"}:
            store.put_file(path, f"runs/{run_id}/{path.relative_to(run_dir)}")
    return f"{store.uri}/runs/{run_id}"


def data_hash(manifest_csv: Path) -> str:
    rows = pd.read_csv(manifest_csv, dtype={"label": str, "id": str}, keep_default_na=False)
    return manifest_hash(rows[rows["status"] != "quarantined"])
