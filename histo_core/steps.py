"""The retrain steps as functions of files, in the order a run performs them.

Each step reads the files of the step before from the run folder, writes its own and
returns their path, so an orchestrator can pass small references between steps, retry
one, or run it again later; and each step runs without any orchestrator in a test or a
notebook. The Prefect tasks in ``tasks/`` are one-line wrappers over these.

    validate -> <data set dir>/manifest.csv, validation.json, data_docs/
    split    -> <data set dir>/split-<key>/split.csv
    train    -> <model dir>/best.pt, last.pt, history.json
    evaluate -> <run dir>/evaluation.json, predictions.csv, roc.png (challenger and
                champion on the same test images)
    promote  -> <run dir>/decision.json, model_card.md (+ a registry version; the
                champion pointer moved if the gate says so)
    upload   -> runs/<run-id>/ in the store

Data set and model folders are content-addressed (``dataset_dir``, ``model_dir``), so a
re-run on unchanged data finds its earlier outputs and a retried training resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from pydantic import BaseModel

from histo_core import __version__
from histo_core.config import EvalConfig, GateConfig, SplitConfig, StoreConfig, TrainConfig, ValidationConfig
from histo_core.data.cache import build_cache, open_cache
from histo_core.data.manifest import NUMERIC_COLUMNS, build_manifest, manifest_hash
from histo_core.data.sources import mirror_s3
from histo_core.gate import decide
from histo_core.model_card import render_model_card
from histo_core.registry import WEIGHTS, Registry
from histo_core.split import assign_partitions
from histo_core.storage import ConflictError, open_store, sha256_file
from histo_core.validation import DataValidationError, require_passed, validate_manifest

if TYPE_CHECKING:
    from histo_core.data.dataset import PatchDataset
    from histo_core.train import BatchCallback, EpochCallback

# torch (about 3 s and 0.7 GiB to import) is imported only by the steps that need it,
# train and evaluate: validation and split run without it, in a process of their own
# on a worker or from the command line.

log = logging.getLogger(__name__)


def _replace(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` to a private temporary sibling, then rename it over ``path``.

    Data-set folders are content-addressed, so two runs on the same data (a nightly run
    and a triggered one, or two ``histo train`` calls) write the same files at once; a
    reader must see one whole version or the other, never half of a CSV.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    return _replace(path, lambda tmp: table.to_csv(tmp, index=False))


def _write_json(path: Path, data: Any) -> Path:
    return _replace(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def content_key(*parts: Any) -> str:
    """A short hash of JSON-able parts: names the folders that content-addressed steps write."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(data: str) -> str | None:
    """Hash of every file's relative path, size and mtime under a local data root (cheap:
    no file is opened); None for remote roots, whose content is only known after listing."""
    if "://" in data and not data.startswith("file://"):
        return None
    root = Path(data.removeprefix("file://")).resolve()
    entries = []
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            entries.append((os.path.relpath(os.path.join(folder, name), root), st.st_size, st.st_mtime_ns))
    return content_key(str(root), sorted(entries))


def dataset_dir(workdir: Path, data: str, cfg: ValidationConfig) -> Path | None:
    """Where ``validate`` writes for this data and config; None when it cannot be known upfront."""
    fingerprint = data_fingerprint(data)
    return workdir / "datasets" / content_key(fingerprint, cfg.model_dump()) if fingerprint else None


def model_dir(workdir: Path, split_csv: Path, cfg: TrainConfig) -> Path:
    """Where ``train`` writes for this split and config: a retry or re-run resumes there."""
    return workdir / "models" / content_key(sha256_file(split_csv), cfg.model_dump())


def validate(data: str, run_dir: Path, cfg: ValidationConfig, manifest_cache: Path | None = None,
             progress: Callable[[int, int], None] | None = None, store: StoreConfig | None = None) -> Path:
    """Build the manifest of ``data`` and validate it; raises if the data set is rejected.

    Writes ``manifest.csv``, ``validation.json`` and GX Data Docs (``data_docs/``) before
    raising, so a rejected run still leaves its reasons. ``manifest_cache`` (a folder of
    ours, never the data root) keeps the last manifest of each data root, so unchanged
    files are not opened again. An ``s3://`` data root is first mirrored into
    ``manifest_cache/../mirror`` through ``store``'s endpoint.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if data.startswith("s3://"):
        mirror_root = (manifest_cache or run_dir).parent / "mirror"
        data = str(mirror_s3(data, mirror_root, store))
    cached = manifest_cache / f"{hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:16]}.csv" \
        if manifest_cache else None
    previous = read_manifest(cached) if cached and cached.exists() else None
    manifest = build_manifest(data, progress=progress, previous=previous)
    key = _validation_key(manifest, cfg)
    if (reused := _earlier_validation(run_dir, key)) is not None:
        log.info("validation: the manifest and thresholds are unchanged since %s; its verdict stands (%s)",
                 run_dir / "validation.json", reused["verdict"])
        if reused["verdict"] != "passed":
            raise DataValidationError("data set rejected: " + "; ".join(reused["problems"]))
        return run_dir / "manifest.csv"
    result = validate_manifest(manifest, cfg, docs_dir=run_dir / "data_docs")
    _write_csv(run_dir / "manifest.csv", result.rows)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(cached, result.rows)
    _write_json(run_dir / "validation.json", {**result.report(), "validation_key": key})
    log.info("validation: %s", result.summary())
    require_passed(result)
    return run_dir / "manifest.csv"


def _validation_key(manifest: pd.DataFrame, cfg: ValidationConfig) -> str:
    """Hash of every manifest cell and the thresholds: equal keys, equal verdicts."""
    cells = pd.util.hash_pandas_object(manifest.astype(str), index=False).to_numpy().tobytes()
    return content_key(hashlib.sha256(cells).hexdigest(), cfg.model_dump())


def _earlier_validation(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The report an earlier validation of exactly this manifest left in ``run_dir``, if any.

    GX's suite and Data Docs cost seconds per ten thousand rows; on unchanged data the
    answer is already written down."""
    report_path, manifest_path = run_dir / "validation.json", run_dir / "manifest.csv"
    if not (report_path.is_file() and manifest_path.is_file()):
        return None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("validation_key") == key else None


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest CSV as written by ``validate``, with its text columns kept as text."""
    return pd.read_csv(path, dtype={"id": str, "label": str, "batch": str, "path": str, "mode": str,
                                    "pixel_sha256": str, "error": str, "reason": str},
                       keep_default_na=False, na_values={c: [""] for c in NUMERIC_COLUMNS})


def split_path(manifest_csv: Path, cfg: SplitConfig) -> Path:
    return manifest_csv.parent / f"split-{content_key(cfg.model_dump())}" / "split.csv"


def split(manifest_csv: Path, cfg: SplitConfig) -> Path:
    """Keep usable rows and assign each its content-hash partition.

    Writes ``split-<config-key>/split.csv`` beside the manifest: one data set, one
    folder, whatever runs use it. ``split.source`` beside it records the manifest's
    SHA-256: a split of an unchanged manifest is not computed again."""
    out = split_path(manifest_csv, cfg)
    source, manifest_digest = out.with_name("split.source"), sha256_file(manifest_csv)
    if out.is_file() and source.is_file() and source.read_text().strip() == manifest_digest:
        log.info("split: %s is unchanged since %s was written", manifest_csv, out)
        return out
    rows = read_manifest(manifest_csv)
    usable = rows[(rows["status"] != "quarantined") & rows["labelled"]].copy()
    usable["label"] = usable["label"].astype(int)
    table = assign_partitions(usable[["id", "label", "path", "batch", "pixel_sha256"]], cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(out, table)
    _replace(source, lambda tmp: tmp.write_text(manifest_digest + "\n"))
    counts = table.groupby(["partition", "label"]).size().unstack(fill_value=0)
    log.info("split (rows by partition and label):\n%s", counts.to_string())
    return out


def load_partitions(split_csv: Path, cache_dir: Path,
                    train_transform: Callable | None = None) -> dict[str, "PatchDataset"]:
    """One dataset per partition, all reading one decoded cache of the split's rows."""
    from histo_core.data.dataset import PatchDataset

    table = pd.read_csv(split_csv, dtype={"id": str}, keep_default_na=False)
    pixels = open_cache(build_cache(table, cache_dir))
    labels = table["label"].to_numpy()
    return {name: PatchDataset(pixels, labels, np.flatnonzero(table["partition"] == name),
                               transform=train_transform if name == "train" else None)
            for name in ("train", "val", "test")}


def train(split_csv: Path, out_dir: Path, cache_dir: Path, cfg: TrainConfig,
          on_epoch: "EpochCallback | None" = None, on_batch: "BatchCallback | None" = None) -> Path:
    """Train a challenger into ``out_dir``; returns its best-val-loss checkpoint."""
    from histo_core.train import fit, training_augmentation

    parts = load_partitions(split_csv, cache_dir, training_augmentation(cfg))
    return fit(parts["train"], parts["val"], cfg, out_dir, on_epoch, on_batch).best_checkpoint


def evaluate(split_csv: Path, challenger: Path, run_dir: Path, cache_dir: Path, store: StoreConfig,
             model_name: str, cfg: EvalConfig = EvalConfig(), device: str = "auto") -> Path:
    """Score the challenger and the current champion (if any) on the same test images.

    Each model's temperature and operating point are fitted on the validation images.
    Writes ``predictions.csv`` (per test image), ``roc.png``, ``pr.png``,
    ``reliability.png`` and ``evaluation.json`` with both models' metrics and their
    paired DeLong comparison.
    """
    from histo_core.evaluate import compare_paired, full_report, plot_curves, predict_checkpoint_logits, sigmoid

    run_dir.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(split_csv, dtype={"id": str}, keep_default_na=False)
    parts = load_partitions(split_csv, cache_dir)

    def score(weights: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        val_logits, val_labels = predict_checkpoint_logits(weights, parts["val"], device, tta=cfg.tta)
        test_logits, test_labels = predict_checkpoint_logits(weights, parts["test"], device, tta=cfg.tta)
        report = full_report(val_labels, val_logits, test_labels, test_logits, cfg.target_sensitivity,
                             cfg.bootstrap)
        return report, sigmoid(test_logits / report["temperature"]), test_labels

    report_c, probs_c, labels = score(challenger)
    predictions = pd.DataFrame({"id": table["id"].to_numpy()[parts["test"].indices], "label": labels.astype(int),
                                "challenger": probs_c})
    report: dict[str, Any] = {"challenger": report_c, "champion": None, "champion_version": None,
                              "champion_etag": None, "comparison": None, "tta": cfg.tta}
    registry = Registry(open_store(store), model_name)
    champion = registry.champion()
    if champion:
        weights = registry.download_weights(champion.version, run_dir / "champion" / WEIGHTS)
        report_h, predictions["champion"], _ = score(weights)
        report.update(champion=report_h, champion_version=champion.version, champion_etag=champion.etag,
                      comparison=compare_paired(labels, probs_c, predictions["champion"].to_numpy()))
    _write_csv(run_dir / "predictions.csv", predictions)
    plot_curves(labels, {c: predictions[c].to_numpy() for c in ("challenger", "champion") if c in predictions},
                run_dir)
    return _write_json(run_dir / "evaluation.json", report)


def promote(evaluation_json: Path, challenger: Path, split_csv: Path, run_dir: Path, store: StoreConfig,
            model_name: str, cfg: GateConfig) -> Path:
    """File the challenger as a complete version, apply the gate, move the champion if it wins.

    The pointer moves only if the champion is still the one this run evaluated: a
    conditional write, so of two runs promoting at once, one ends with "conflict".
    """
    evaluation = json.loads(evaluation_json.read_text())
    challenger_auc = evaluation["challenger"]["auc"]
    champion_auc = evaluation["champion"]["auc"] if evaluation["champion"] else None
    p_value = evaluation["comparison"]["p_value"] if evaluation["comparison"] else None
    decision = decide(challenger_auc, champion_auc, cfg, p_value)
    registry = Registry(open_store(store), model_name)
    version = registry.new_version_id()
    reasons = list(decision.reasons)
    outcome = "promoted" if decision.promote else "rejected"
    current = registry.champion()
    if decision.promote and (current.etag if current else None) != evaluation["champion_etag"]:
        outcome = "conflict"
        reasons.append("champion changed underneath this run since it was evaluated; not promoting")
    elif decision.promote and current and current.record.get("sha256") == sha256_file(challenger):
        # A re-run on unchanged data and settings finds its cached model: promoting it
        # would file the champion again under a new name every night.
        outcome = "rejected"
        reasons.append(f"the challenger's weights are the champion's ({current.version}): nothing new to promote")
    record = {"outcome": outcome, "version": version, "reasons": reasons, "challenger_auc": challenger_auc,
              "champion_auc": champion_auc, "previous_champion": evaluation["champion_version"]}
    _publish(registry, version, record, evaluation, challenger, split_csv, run_dir, cfg)
    if outcome == "promoted":
        try:
            registry.set_champion(version, current, auc=challenger_auc)
        except ConflictError as exc:
            outcome, record["outcome"] = "conflict", "conflict"
            reasons.append(str(exc))
    registry.record_event(outcome, version, {"reasons": reasons,
                                             "previous_champion": evaluation["champion_version"]})
    champion = registry.champion()
    record["champion"] = champion.version if champion else None
    return _write_json(run_dir / "decision.json", record)


def _publish(registry: Registry, version: str, decision: dict[str, Any], evaluation: dict[str, Any],
             challenger: Path, split_csv: Path, run_dir: Path, gate: GateConfig) -> None:
    """Write the version's metrics, model card and config beside the weights, then upload all."""
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    split_table = pd.read_csv(split_csv, dtype={"id": str}, keep_default_na=False)
    manifest_digest = data_hash(manifest_of(split_csv))
    files = {WEIGHTS: challenger,
             "metrics.json": _write_json(run_dir / "metrics.json", evaluation),
             "config.json": _write_json(run_dir / "version-config.json", {**config, "gate": gate.model_dump()}),
             "roc.png": run_dir / "roc.png", "pr.png": run_dir / "pr.png",
             "reliability.png": run_dir / "reliability.png",
             "history.json": challenger.parent / "history.json"}
    card = run_dir / "model_card.md"
    card.write_text(render_model_card(model_name=registry.name, version=version, code_version=__version__,
                                      data_hash=manifest_digest, split=split_table, config=config,
                                      evaluation=evaluation, decision=decision))
    files["model_card.md"] = card
    registry.publish_version(version, {k: v for k, v in files.items() if v.exists()}, {
        "metrics": evaluation["challenger"], "data_manifest_hash": manifest_digest,
        "code_version": __version__, "decision": decision})


def record_config(run_dir: Path, config: BaseModel) -> Path:
    """Keep the run's full configuration beside its outputs (and later in its version)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return _write_json(run_dir / "config.json", config.model_dump(mode="json"))


def manifest_of(split_csv: Path) -> Path:
    """The manifest a split was made from: split folders live inside their data set folder."""
    return split_csv.parent.parent / "manifest.csv"


def upload(run_dir: Path, split_csv: Path, challenger: Path, store: StoreConfig, run_id: str) -> str:
    """Copy the run's record to ``runs/<run-id>/``: its own files, the data set's manifest,
    validation report and Data Docs, the split, and the training history. Weights are
    not copied again: they live in the version."""
    target = open_store(store)
    data_dir = manifest_of(split_csv).parent
    files = {str(p.relative_to(run_dir)): p for p in run_dir.rglob("*")
             if p.is_file() and p.suffix in {".json", ".csv", ".md", ".png"} and "champion" not in p.parts}
    files.update({f"data_docs/{p.relative_to(data_dir / 'data_docs')}": p
                  for p in (data_dir / "data_docs").rglob("*") if p.is_file()})
    files.update({"manifest.csv": data_dir / "manifest.csv", "validation.json": data_dir / "validation.json",
                  "split.csv": split_csv, "train/history.json": challenger.parent / "history.json"})
    for name, path in sorted(files.items()):
        if path.is_file():
            target.put_file(path, f"runs/{run_id}/{name}")
    return f"{target.uri}/runs/{run_id}"


def data_hash(manifest_csv: Path) -> str:
    rows = read_manifest(manifest_csv)
    return manifest_hash(rows[rows["status"] != "quarantined"])
