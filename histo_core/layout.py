"""Where every file of a retrain lives: one type per folder, each naming its files.

    <workdir>/
      datasets/<key>/              DatasetDir: one data set under one validation config
        manifest.csv, validation.json, data_docs/
        split-<key>/               SplitDir: one split config of that data set
          split.csv, split.source
      models/<key>/                ModelDir: one split + training config
        best.pt, last.pt, history.json, training.json, split.json
      runs/<run-id>/               RunDir: one run's evaluation and decision
        config.json, evaluation.json, predictions.csv, roc.png, pr.png, reliability.png,
        metrics.json, version-config.json, model_card.md, decision.json, champion/model.pt
      cache/, manifests/, mirror/  shared: decoded pixels, manifests of data roots, S3 copies

Steps take and return these types instead of guessing a sibling's path, and the upload
and the flow's summary iterate the files declared here. A folder is a small reference
(its path), so Prefect tasks pass ``str(folder.root)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SplitDir:
    """One split of a data set; it lives inside the data set's folder."""

    root: Path

    @property
    def csv(self) -> Path:
        return self.root / "split.csv"

    @property
    def source(self) -> Path:
        """The SHA-256 of the manifest the split was made from: an unchanged manifest keeps it."""
        return self.root / "split.source"

    @property
    def dataset(self) -> "DatasetDir":
        return DatasetDir(self.root.parent)


@dataclass(frozen=True)
class DatasetDir:
    """A validated data set: its manifest, the verdict and the GX Data Docs."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def data_docs(self) -> Path:
        return self.root / "data_docs"

    def split(self, key: str) -> SplitDir:
        return SplitDir(self.root / f"split-{key}")

    def record_files(self) -> dict[str, Path]:
        """The files a run's record keeps of its data set, by their name there."""
        files = {"manifest.csv": self.manifest, "validation.json": self.validation}
        files.update({f"data_docs/{p.relative_to(self.data_docs).as_posix()}": p
                      for p in sorted(self.data_docs.rglob("*")) if p.is_file()})
        return files


@dataclass(frozen=True)
class ModelDir:
    """One training: the best-val-loss weights, the resumable last state, the history."""

    root: Path

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def training(self) -> Path:
        """Where and with what it was trained: device, library versions, wall time, best epoch."""
        return self.root / "training.json"

    @property
    def split_ref(self) -> Path:
        """Which split trained it (folder and split.csv's SHA-256), so that evaluating the
        model later can tell its training images from its held-out ones."""
        return self.root / "split.json"


@dataclass(frozen=True)
class RunDir:
    """One retrain run's own outputs."""

    root: Path

    config = property(lambda self: self.root / "config.json")
    evaluation = property(lambda self: self.root / "evaluation.json")
    predictions = property(lambda self: self.root / "predictions.csv")
    roc = property(lambda self: self.root / "roc.png")
    pr = property(lambda self: self.root / "pr.png")
    reliability = property(lambda self: self.root / "reliability.png")
    metrics = property(lambda self: self.root / "metrics.json")
    version_config = property(lambda self: self.root / "version-config.json")
    model_card = property(lambda self: self.root / "model_card.md")
    decision = property(lambda self: self.root / "decision.json")
    champion_weights = property(lambda self: self.root / "champion" / "model.pt")

    @property
    def plots(self) -> dict[str, Path]:
        return {"roc": self.roc, "pr": self.pr, "reliability": self.reliability}

    def record_files(self) -> dict[str, Path]:
        """The run's own files for its record in the store (not the champion's weights)."""
        return {p.name: p for p in (self.config, self.evaluation, self.predictions, *self.plots.values(),
                                    self.metrics, self.version_config, self.model_card, self.decision)}

    def version_files(self, model: ModelDir) -> dict[str, Path]:
        """A registry version's files, by their name in the version."""
        return {"model.pt": model.best, "metrics.json": self.metrics, "config.json": self.version_config,
                "roc.png": self.roc, "pr.png": self.pr, "reliability.png": self.reliability,
                "history.json": model.history, "training.json": model.training, "model_card.md": self.model_card}


@dataclass(frozen=True)
class Workdir:
    """A worker's or laptop's working folder: content-keyed data sets and models, runs."""

    root: Path

    def dataset(self, key: str) -> DatasetDir:
        return DatasetDir(self.root / "datasets" / key)

    def model(self, key: str) -> ModelDir:
        return ModelDir(self.root / "models" / key)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.root / "runs" / run_id)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"
