"""The retrain steps as functions of files, in the order a run performs them.

Each step takes the folders of the steps before (``histo_core.layout``), writes its own
files into its folder and returns it, so an orchestrator can pass small references
between steps, retry one, or run it again later; and each step runs without any
orchestrator in a test or a notebook. The Prefect tasks in ``tasks/`` are thin wrappers.

    validate -> DatasetDir: manifest.csv, validation.json, data_docs/
    split    -> SplitDir (inside the DatasetDir): split.csv
    train    -> ModelDir: best.pt, last.pt, history.json, training.json, split.json
    evaluate -> RunDir: evaluation.json, predictions.csv, roc/pr/reliability.png
                (challenger and champion on the same test images)
    promote  -> RunDir: decision.json, model_card.md (+ a registry version; the
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
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from pydantic import BaseModel

from histo_core import __version__
from histo_core.batch_verdicts import VerdictStore
from histo_core.config import EvalConfig, GateConfig, SplitConfig, StoreConfig, TrainConfig, ValidationConfig
from histo_core.data.cache import build_cache, open_cache
from histo_core.data.manifest import NUMERIC_COLUMNS, build_manifest, manifest_hash
from histo_core.data.mirror import mirror_s3
from histo_core.errors import UnservableVersionError
from histo_core.gate import Circumstances, decide
from histo_core.label_audit import champion_scorer
from histo_core.layout import DatasetDir, ModelDir, RunDir, SplitDir, Workdir
from histo_core.model_card import render_model_card
from histo_core.registry import WEIGHTS, Registry, RegistryStateError, open_registry
from histo_core.split import assign_partitions
from histo_core.atomic import atomic_write
from histo_core.tables import read_csv, write_csv
from histo_core.storage import ConflictError, StoreError, open_store, sha256_file
from histo_core.validation import DataValidationError, require_passed, validate_manifest

if TYPE_CHECKING:
    from histo_core.data.dataset import PatchDataset
    from histo_core.train import BatchCallback, EpochCallback

# torch (about 3 s and 0.7 GiB to import) is imported only by the steps that need it,
# train and evaluate: validation and split run without it, in a process of their own
# on a worker or from the command line.

log = logging.getLogger(__name__)


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    """Data-set folders are content-addressed, so two runs on the same data write the
    same files at once; ``write_csv`` renames a whole file into place, never half of one."""
    return write_csv(table, path)


def _write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


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


def dataset_dir(workdir: Workdir, data: str, cfg: ValidationConfig) -> DatasetDir | None:
    """Where ``validate`` writes for this data and config; None when it cannot be known upfront."""
    fingerprint = data_fingerprint(data)
    return workdir.dataset(content_key(fingerprint, cfg.model_dump())) if fingerprint else None


# Training settings added after model folders were first keyed: part of the key only when
# changed from their default, so that an upgraded worker still finds the models it trained.
KEYED_ONLY_WHEN_SET = ("width", "scale_jitter")


def model_dir(workdir: Workdir, split: SplitDir, cfg: TrainConfig) -> ModelDir:
    """Where ``train`` writes for this split and config: a retry or re-run resumes there."""
    settings = {name: value for name, value in cfg.model_dump().items()
                if name not in KEYED_ONLY_WHEN_SET or value != TrainConfig.model_fields[name].default}
    return workdir.model(content_key(sha256_file(split.csv), settings))


def validate(data: str, dataset: DatasetDir, cfg: ValidationConfig, manifest_cache: Path | None = None,
             progress: Callable[[int, int], None] | None = None, store: StoreConfig | None = None,
             model_name: str | None = None) -> DatasetDir:
    """Build the manifest of ``data`` and validate it; raises if the data set is rejected.

    Writes ``manifest.csv`` (the rows of the data set: those of rejected batches are left
    out), ``validation.json`` (every row's status, every batch's verdict) and GX Data
    Docs (``data_docs/``) before raising, so a rejected run still leaves its reasons.
    ``manifest_cache`` (a folder of ours, never the data root) keeps the last manifest of
    each data root, so unchanged files are not opened again. An ``s3://`` data root is
    first mirrored into ``manifest_cache/../mirror`` through ``store``'s endpoint. With
    ``store``, batch verdicts are read from and recorded in it (``batch_verdicts``); with
    ``model_name`` too, new batches get the champion's label audit (``label_audit``).
    """
    dataset.root.mkdir(parents=True, exist_ok=True)
    source, faults, refused = data, {}, {}
    if data.startswith("s3://"):
        mirrored = mirror_s3(data, (manifest_cache or dataset.root).parent / "mirror", store)
        data, refused = str(mirrored.root), mirrored.refused
        faults.update(mirrored.refused_batches())
    cached = manifest_cache / f"{hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:16]}.csv" \
        if manifest_cache else None
    previous = read_manifest(cached) if cached and cached.exists() else None
    manifest = build_manifest(data, progress=progress, previous=previous, faults=faults)
    verdicts = VerdictStore(open_store(store), source) if store is not None else None
    known = verdicts.all() if verdicts and (faults or (manifest["batch"] != "").any()) else {}
    if (reused := _earlier_validation(dataset, _validation_key(manifest, cfg, faults, known))) is not None:
        log.info("validation: the manifest, thresholds and batch verdicts are unchanged since %s; its verdict "
                 "stands (%s)", dataset.validation, reused["verdict"])
        if reused["verdict"] != "passed":
            raise DataValidationError("data set rejected: " + "; ".join(reused["problems"]))
        return dataset
    with tempfile.TemporaryDirectory(prefix="histo-label-audit-") as champion_folder:
        scorer = champion_scorer(open_registry(store, model_name), Path(champion_folder)) \
            if verdicts and model_name else None
        result = validate_manifest(manifest, cfg, docs_dir=dataset.data_docs, batch_faults=faults,
                                   known_verdicts=known, scorer=scorer)
    if verdicts:
        for verdict in result.batches.values():
            if verdict["new"]:
                verdicts.record(verdict)
        known = {**known, **{b: {k: x for k, x in v.items() if k != "new"} | {"data": source}
                             for b, v in result.batches.items() if v["new"]}}
    _write_csv(dataset.manifest, result.rows)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(cached, manifest)  # every row, rejected batches' too: their files need no second look
    _write_json(dataset.validation, {**result.report(), "refused_keys": refused,
                                     "validation_key": _validation_key(manifest, cfg, faults, known)})
    log.info("validation: %s", result.summary())
    require_passed(result)
    return dataset


def _validation_key(manifest: pd.DataFrame, cfg: ValidationConfig, faults: dict[str, list[str]],
                    verdicts: dict[str, dict[str, Any]]) -> str:
    """Hash of every manifest cell, the thresholds, the batch faults and the recorded
    verdicts (an operator's re-admission changes the data set): equal keys, equal verdicts."""
    cells = pd.util.hash_pandas_object(manifest.astype(str), index=False).to_numpy().tobytes()
    standing = {b: (v.get("verdict"), v.get("content"), v.get("faults")) for b, v in verdicts.items()}
    return content_key(hashlib.sha256(cells).hexdigest(), cfg.model_dump(), faults, standing)


def _earlier_validation(dataset: DatasetDir, key: str) -> dict[str, Any] | None:
    """The report an earlier validation of exactly this manifest left in ``dataset``, if any.

    GX's suite and Data Docs cost seconds per ten thousand rows; on unchanged data the
    answer is already written down."""
    if not (dataset.validation.is_file() and dataset.manifest.is_file()):
        return None
    try:
        report = json.loads(dataset.validation.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("validation_key") == key else None


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest CSV as written by ``validate``, with its text columns kept as text."""
    return read_csv(path, dtype={"id": str, "label": str, "batch": str, "path": str, "mode": str,
                                 "pixel_sha256": str, "error": str, "reason": str},
                    keep_default_na=False, na_values={c: [""] for c in NUMERIC_COLUMNS})


def split_dir(dataset: DatasetDir, cfg: SplitConfig) -> SplitDir:
    """Where ``split`` writes for this data set and split config."""
    return dataset.split(content_key(cfg.model_dump()))


def split(dataset: DatasetDir, cfg: SplitConfig) -> SplitDir:
    """Keep usable rows and assign each its content-hash partition.

    Writes ``split-<config-key>/split.csv`` inside the data set's folder: one data set,
    one folder, whatever runs use it. ``split.source`` beside it records the manifest's
    SHA-256: a split of an unchanged manifest is not computed again."""
    out = split_dir(dataset, cfg)
    manifest_digest = sha256_file(dataset.manifest)
    if out.csv.is_file() and out.source.is_file() and out.source.read_text().strip() == manifest_digest:
        log.info("split: %s is unchanged since %s was written", dataset.manifest, out.csv)
        return out
    rows = read_manifest(dataset.manifest)
    usable = rows[(rows["status"] != "quarantined") & rows["labelled"]].copy()
    usable["label"] = usable["label"].astype(int)
    table = assign_partitions(usable[["id", "label", "path", "batch", "pixel_sha256"]], cfg)
    out.root.mkdir(parents=True, exist_ok=True)
    _write_csv(out.csv, table)
    atomic_write(out.source, lambda tmp: tmp.write_text(manifest_digest + "\n"))
    counts = table.groupby(["partition", "label"]).size().unstack(fill_value=0)
    log.info("split (rows by partition and label):\n%s", counts.to_string())
    return out


def read_split(split: SplitDir) -> pd.DataFrame:
    return read_csv(split.csv, dtype={"id": str}, keep_default_na=False)


def load_partitions(split: SplitDir, cache_dir: Path,
                    train_transform: Callable | None = None) -> dict[str, "PatchDataset"]:
    """One dataset per partition, all reading one decoded cache of the split's rows."""
    from histo_core.data.dataset import PatchDataset

    table = read_split(split)
    pixels = open_cache(build_cache(table, cache_dir))
    labels = table["label"].to_numpy()
    return {name: PatchDataset(pixels, labels, np.flatnonzero(table["partition"] == name),
                               transform=train_transform if name == "train" else None)
            for name in ("train", "val", "test")}


def train(split: SplitDir, model: ModelDir, cache_dir: Path, cfg: TrainConfig,
          on_epoch: "EpochCallback | None" = None, on_batch: "BatchCallback | None" = None) -> ModelDir:
    """Train a challenger into ``model``: best.pt (best val loss), last.pt, history.json."""
    from histo_core.train import fit, training_augmentation

    parts = load_partitions(split, cache_dir, training_augmentation(cfg))
    record_split(model, split)
    result = fit(parts["train"], parts["val"], cfg, model.root, on_epoch, on_batch)
    record_training(model, result.history, result.device)
    return model


def record_training(model: ModelDir, history: list[dict[str, Any]], device: str) -> None:
    """``training.json``: what the model card reports about how the model was made."""
    from importlib.metadata import version

    best = best_epoch(history)
    _write_json(model.training, {
        "device": device, "torch": version("torch"), "torchvision": version("torchvision"),
        "histo_retrain": __version__, "epochs": len(history), "best_epoch": best.get("epoch"),
        "best_val_loss": best.get("val_loss"), "best_val_auc": best.get("val_auc"),
        "seconds": sum(r.get("seconds", 0.0) for r in history)})


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch ``best.pt`` holds: the last that improved the val loss (from
    ``TrainConfig.early_stopping_from`` on the best is chosen afresh, so it need not be the
    lowest val loss of the run)."""
    return next((r for r in reversed(history) if r["improved"]), {})


def record_split(model: ModelDir, split: SplitDir) -> None:
    model.root.mkdir(parents=True, exist_ok=True)
    _write_json(model.split_ref, {"split": str(split.root.resolve()), "sha256": sha256_file(split.csv)})


def training_split(checkpoint: Path) -> SplitDir | None:
    """The split a checkpoint was trained on, if its folder records one that is still there
    unchanged (``ModelDir.split_ref``)."""
    ref = ModelDir(Path(checkpoint).parent).split_ref
    if not ref.is_file():
        return None
    record = json.loads(ref.read_text())
    split = SplitDir(Path(record["split"]))
    return split if split.csv.is_file() and sha256_file(split.csv) == record["sha256"] else None


def evaluate(split: SplitDir, model: ModelDir, run: RunDir, cache_dir: Path, store: StoreConfig,
             model_name: str, cfg: EvalConfig = EvalConfig(), device: str = "auto") -> RunDir:
    """Score the challenger and the current champion (if any) on the same test images.

    Each model's temperature and operating point are fitted on the validation images.
    Writes ``predictions.csv`` (per test image), the ROC, PR and reliability plots, and
    ``evaluation.json`` with both models' metrics and their paired DeLong comparison.
    """
    from histo_core.evaluate import compare_paired, full_report, sigmoid
    from histo_core.inference import load_model, pick_device, score_dataset

    run.root.mkdir(parents=True, exist_ok=True)
    table = read_split(split)
    parts = load_partitions(split, cache_dir)
    torch_device = pick_device(device)

    def assess(weights: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        net = load_model(weights, torch_device)
        val_logits, val_labels = score_dataset(net, parts["val"], torch_device, cfg.tta, cfg.batch_size)
        test_logits, test_labels = score_dataset(net, parts["test"], torch_device, cfg.tta, cfg.batch_size)
        report = full_report(val_labels, val_logits, test_labels, test_logits, cfg.target_sensitivity,
                             cfg.bootstrap)
        return report, sigmoid(test_logits / report["temperature"]), test_labels

    report_c, probs_c, labels = assess(model.best)
    predictions = pd.DataFrame({"id": table["id"].to_numpy()[parts["test"].indices], "label": labels.astype(int),
                                "challenger": probs_c})
    report: dict[str, Any] = {"challenger": report_c, "champion": None, "champion_version": None,
                              "champion_etag": None, "comparison": None, "tta": cfg.tta}
    registry = open_registry(store, model_name)
    champion = registry.champion()
    problems = registry.verify(champion.version) if champion else []
    if champion and problems:
        # The service is broken already: a challenger that clears the floor restores it, and
        # gating it against an older champion would judge it against a model not in service.
        log.warning("the champion %s cannot serve (%s); the challenger is judged as if there were none",
                    champion.version, "; ".join(problems))
        report.update(champion_version=champion.version, champion_etag=champion.etag,
                      champion_problem="; ".join(problems))
    elif champion:
        _, weights = registry.fetch_weights(run.champion_weights.parent, champion.version)
        report_h, predictions["champion"], _ = assess(weights)
        report.update(champion=report_h, champion_version=champion.version, champion_etag=champion.etag,
                      comparison=compare_paired(labels, probs_c, predictions["champion"].to_numpy()))
    write_predictions(predictions, run.predictions, run.plots)
    _write_json(run.evaluation, report)
    return run


def write_predictions(predictions: pd.DataFrame, csv: Path, plots: dict[str, Path],
                      thresholds: dict[str, float] | None = None) -> None:
    """``predictions.csv`` (id, label, challenger[, champion]: calibrated probabilities) and
    the ROC, PR and reliability plots of its model columns: what a retrain's evaluation and
    ``histo evaluate --out`` both write."""
    from histo_core.evaluate import plot_curves

    _write_csv(csv, predictions)
    models = [c for c in ("challenger", "champion") if c in predictions]
    plot_curves(predictions["label"].to_numpy(), {c: predictions[c].to_numpy() for c in models}, plots, thresholds)


def evaluate_images(checkpoint: Path, table: pd.DataFrame, cfg: EvalConfig, device: str = "auto",
                    partition: pd.Series | None = None, target: str | None = None, root: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    adapt: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """One checkpoint on the labelled images of ``table`` (``id``, ``label``, ``path``):
    its metrics and predictions (id, label, challenger), the columns a retrain writes.

    With ``target`` (a partition name) and each row's ``partition`` in the checkpoint's
    training split, only that partition is reported, with the temperature and operating
    point fitted on the validation images, as a retrain does; otherwise both are fitted by
    cross-fitting on the scored images themselves. Rows that cannot be read are counted
    (``unreadable``) and left out; ``metrics["first_error"]`` names the first. ``adapt``:
    the BatchNorm statistics are first re-estimated on the scored images
    (``PredictConfig.adapt_to_data``)."""
    from histo_core.evaluate import cross_fitted_report, full_report, sigmoid
    from histo_core.predict import score_paths

    scored = table[partition.isin({target, "val"})] if target and partition is not None else table
    logits, errors = score_paths(checkpoint, scored["path"].tolist(), device, batch_size=cfg.batch_size, tta=cfg.tta,
                                 root=root, progress=progress, adapt=adapt)
    ok = ~np.isnan(logits)
    if not ok.any():
        from histo_core.data.sources import DataSourceError

        raise DataSourceError(f"none of the {len(scored)} images could be scored; the first: "
                              f"{scored['id'].iloc[0]}: {errors[0]}")
    labels = scored["label"].astype(int).to_numpy()
    if target and partition is not None:
        part = partition[scored.index].to_numpy()
        val, chosen = ok & (part == "val"), ok & (part == target)
        metrics = full_report(labels[val], logits[val], labels[chosen], logits[chosen], cfg.target_sensitivity,
                              cfg.bootstrap)
        probability = sigmoid(logits[chosen] / metrics["temperature"])
        unreadable = int((~ok & (part == target)).sum())
    else:
        chosen = ok
        metrics, probability = cross_fitted_report(labels[ok], logits[ok], cfg.target_sensitivity, cfg.bootstrap)
        unreadable = int((~ok).sum())
    metrics.update(tta=cfg.tta, adapted_to_data=adapt, unreadable=unreadable, first_error=next((e for e in errors if e), ""),
                   checkpoint=str(checkpoint), split=target)
    predictions = pd.DataFrame({"id": scored["id"].to_numpy()[chosen], "label": labels[chosen],
                                "challenger": probability})
    return metrics, predictions


def promote(run: RunDir, model: ModelDir, split: SplitDir, store: StoreConfig, model_name: str,
            cfg: GateConfig) -> RunDir:
    """File the challenger as a complete version, apply the gate, move the champion if it wins.

    The pointer moves only if the champion is still the one this run evaluated: a
    conditional write, so of two runs promoting at once, one ends with "conflict".
    Writes ``decision.json``.
    """
    evaluation = json.loads(run.evaluation.read_text())
    challenger_auc = evaluation["challenger"]["auc"]
    champion_auc = evaluation["champion"]["auc"] if evaluation["champion"] else None
    p_value = evaluation["comparison"]["p_value"] if evaluation["comparison"] else None
    registry = open_registry(store, model_name)
    version = registry.new_version_id()
    current = registry.champion()
    sensitivities = (evaluation["challenger"]["operating_point"]["sensitivity"],
                     evaluation["champion"]["operating_point"]["sensitivity"]) \
        if evaluation["champion"] and cfg.max_sensitivity_drop is not None else None
    digest = sha256_file(model.best)
    circumstances = Circumstances(
        champion_problem=evaluation.get("champion_problem"), champion_version=evaluation["champion_version"],
        champion_moved=(current.etag if current else None) != evaluation["champion_etag"],
        # A champion whose stored weights are broken is no copy of the challenger, even if its
        # record names the same bytes: re-filing them as a new version restores the service.
        same_weights_as=current.version if current and not evaluation.get("champion_problem")
        and current.record.get("sha256") == digest else None)
    decision = decide(challenger_auc, champion_auc, cfg, p_value, circumstances, sensitivities)
    outcome, reasons = decision.outcome, list(decision.reasons)
    record = {"outcome": outcome, "version": version, "reasons": reasons, "challenger_auc": challenger_auc,
              "champion_auc": champion_auc, "previous_champion": evaluation["champion_version"],
              "champion": current.version if current else None}
    if outcome != "promoted" and (filed := _filed_with_same_weights(registry, current, digest)):
        # Unchanged data and settings, night after night: record the decision, not another copy.
        record.update(version=filed, reasons=[*reasons, f"weights identical to the filed version {filed}: "
                                              "the decision is recorded, no new version is filed"])
        _write_json(run.decision, record)
        registry.record_event(outcome, filed, {"reasons": record["reasons"], "run": run.root.name,
                                               "previous_champion": record["previous_champion"]})
        return run
    _publish(registry, version, record, evaluation, model, split, run, cfg)
    # The audit trail goes first: decision.json and the event exist before the pointer moves.
    _write_json(run.decision, {**record, "champion": version} if outcome == "promoted" else record)
    if outcome != "promoted":
        registry.record_event(outcome, version, {"reasons": reasons, "previous_champion": record["previous_champion"]})
        return run
    try:
        registry.set_champion(version, current, event="promoted", auc=challenger_auc, reasons=reasons,
                              run=run.root.name)
    except (ConflictError, UnservableVersionError) as exc:
        record.update(outcome="conflict" if isinstance(exc, ConflictError) else "rejected")
        reasons.append(str(exc))
        registry.record_event(record["outcome"], version, {"reasons": reasons,
                                                           "previous_champion": record["previous_champion"]})
        champion = registry.champion()
        record["champion"] = champion.version if champion else None
        _write_json(run.decision, record)
    return run


def _filed_with_same_weights(registry: Registry, champion: Any, digest: str) -> str | None:
    """The champion or the newest version when its weights have this sha256, else None."""
    if champion is not None and champion.record.get("sha256") == digest:
        return champion.version
    newest = registry.versions()[-1:]
    try:
        if newest and registry.version(newest[0]).get("files", {}).get(WEIGHTS) == digest:
            return newest[0]
    except (RegistryStateError, StoreError):
        return None
    return None


def _publish(registry: Registry, version: str, decision: dict[str, Any], evaluation: dict[str, Any],
             model: ModelDir, split: SplitDir, run: RunDir, gate: GateConfig) -> None:
    """Write the version's metrics, model card and config beside the weights, then upload all."""
    config = json.loads(run.config.read_text()) if run.config.exists() else {}
    manifest_digest = data_hash(split.dataset)
    _write_json(run.metrics, evaluation)
    _write_json(run.version_config, {**config, "gate": gate.model_dump()})
    training = json.loads(model.training.read_text()) if model.training.is_file() else {}
    card = render_model_card(
        model_name=registry.name, version=version, code_version=__version__, data_hash=manifest_digest,
        split=read_split(split), config=config, evaluation=evaluation, decision=decision, training=training)
    atomic_write(run.model_card, lambda tmp: tmp.write_text(card))
    files = run.version_files(model)
    registry.publish_version(version, {k: v for k, v in files.items() if v.exists()}, {
        "metrics": evaluation["challenger"], "data_manifest_hash": manifest_digest,
        "code_version": __version__, "decision": decision})


def record_config(run: RunDir, config: BaseModel) -> Path:
    """Keep the run's full configuration beside its outputs (and later in its version)."""
    run.root.mkdir(parents=True, exist_ok=True)
    return _write_json(run.config, config.model_dump(mode="json"))


def record_files(run: RunDir, split: SplitDir, model: ModelDir) -> dict[str, Path]:
    """A run's record, by name under ``runs/<run-id>/``: its own files, the data set's
    manifest, validation report and Data Docs, the split, and the training history.
    Weights are not in it: they live in the version."""
    files = {**run.record_files(), **split.dataset.record_files(), "split.csv": split.csv,
             "train/history.json": model.history}
    return {name: path for name, path in sorted(files.items()) if path.is_file()}


def upload(run: RunDir, split: SplitDir, model: ModelDir, store: StoreConfig, run_id: str) -> str:
    """Copy the run's record (``record_files``) to ``runs/<run-id>/`` in the store."""
    target = open_store(store)
    for name, path in record_files(run, split, model).items():
        target.put_file(path, f"runs/{run_id}/{name}")
    return f"{target.uri}/runs/{run_id}"


def upload_failed(run: RunDir, dataset: DatasetDir, store: StoreConfig, run_id: str) -> str:
    """A failed run's record (its config, the validation report, manifest and Data Docs,
    whatever exists) to ``runs/<run-id>/``, so the reasons are read where every run's are."""
    target = open_store(store)
    files = {**run.record_files(), **dataset.record_files()}
    for name, path in sorted(files.items()):
        if path.is_file():
            target.put_file(path, f"runs/{run_id}/{name}")
    return f"{target.uri}/runs/{run_id}"


def data_hash(dataset: DatasetDir) -> str:
    rows = read_manifest(dataset.manifest)
    return manifest_hash(rows[rows["status"] != "quarantined"])
