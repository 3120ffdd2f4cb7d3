"""Typed configuration shared by the library, the CLI, the flows and the deployments.

Every model is frozen: the library receives a finished config and never edits it;
overrides from the command line or a Prefect form are applied at the edge with
``model_copy(update=...)``. Defaults run on a laptop CPU in a few minutes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

CREDENTIALS_IN_URL = "credentials_in_url"  # the error type whose input is never shown


def refuse_credentials(url: str | None) -> str | None:
    """``url`` unchanged, unless it carries ``user:secret@`` before its host: refused with
    a message that never repeats it. Credentials given that way would be printed in
    errors, stored in ``config.json`` and shown as the flow run's parameters."""
    if url and "://" in url and "@" in urlsplit(url).netloc:
        raise PydanticCustomError(CREDENTIALS_IN_URL, (
            "credentials in a URL ('user:secret@' before the host) are refused; give them through the AWS "
            "credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or an instance role)"))
    return url


Url = Annotated[str, AfterValidator(refuse_credentials)]
# The architectures of histo_core.model.MODELS (which checks that the two agree), named here
# so that a config with an unknown one fails when it is built, before any data is read.
ModelName = Literal["simple_cnn", "simple_cnn_ibn", "resnet18", "resnet34", "resnet50"]
SEED_CNN_WIDTH = 32  # the original network's first-block channels (TrainConfig.width)
# TrainConfig.width of smoke runs and of tests that are about the pipeline, not the model:
# every code path of the default architecture at about a seventh of its compute.
SMOKE_WIDTH = 8


class _Frozen(BaseModel):
    # hide_input_in_errors: a refused value (a URL with a secret) is never part of an error's text
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class ValidationConfig(_Frozen):
    """Thresholds that decide whether a data set may be trained on."""

    image_size: int = Field(96, description="Expected width and height of every patch, in pixels.")
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="Stop the run when more than this fraction of rows is quarantined."
    )
    min_positive_fraction: float = Field(0.05, ge=0, le=1, description="Lowest accepted share of label 1.")
    max_positive_fraction: float = Field(0.95, ge=0, le=1, description="Highest accepted share of label 1.")
    min_rows: int = Field(20, ge=1, description="Fewest usable rows worth training on.")
    drift_threshold: float = Field(
        0.5, gt=0, description="Warn when the newest batch's mean colour moves more than this many "
                               "reference standard deviations.")
    label_audit_margin: float = Field(0.05, ge=0, le=1, description=(
        "Hold a new batch when the champion ranks its labels this much lower (AUC) than the usable "
        "batches' and beyond their spread and chance (z > 3); 0 turns the label audit off "
        "(histo_core.label_audit)."))
    label_audit_min_rows: int = Field(50, ge=1, description="Fewest usable rows a batch needs to be audited.")


class SplitConfig(_Frozen):
    """Fractions of the content-hash split. Changing ``salt`` reshuffles every image: don't."""

    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    salt: str = Field("histo-retrain-v1", description="Fixed salt of the split hash.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f}; "
                "it must stay below 0.9 to leave data for training"
            )
        return self


class TrainConfig(_Frozen):
    """How the challenger is trained."""

    model: ModelName = Field("simple_cnn", description=(
        "Architecture name, see histo_core.model.MODELS. The default is the original project's CNN; "
        "'simple_cnn_ibn' adds IBN-Net's normalisation in its first two blocks (it carried less far across "
        "staining groups at 30 epochs: docs/benchmarks.md)."))
    width: int = Field(SEED_CNN_WIDTH, ge=2, le=256, description=(
        "Channels of the simple_cnn models' first block, doubled in each of the five (the original: 32, so "
        "32 -> 512). Compute grows with its square: 8 trains about 7x faster and learns less, for smoke runs "
        "and tests. The ResNets keep torchvision's widths."))
    epochs: int = Field(45, ge=1, description=(
        "How many epochs to train (fewer only with a `patience`). The learning rate decays over this many epochs: "
        "45 instead of 30 scored 0.013 higher across staining groups in two seeds, for at most 1.5x the "
        "training time (docs/benchmarks.md)."))
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (linear warm-up, then cosine decay).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's decoupled weight decay.")
    patience: int | None = Field(None, ge=1, description=(
        "Stop after this many epochs without a better val loss (counted from `min_epochs`); None: train the whole "
        "schedule. The best checkpoint usually comes in the last epochs, at the smallest learning rates: of 20 "
        "45-epoch runs, the 9 that finished saved at epoch 40-45, and of two that 6 epochs of patience had "
        "stopped, resumed to 45, one found a better checkpoint (+0.007 to +0.012 AUC across stains), the other "
        "none. The whole schedule is within the time the project allows (docs/benchmarks.md)."))
    min_epochs: int | None = Field(None, ge=1, description=(
        "The checkpoint is chosen among the epochs after this one: while the learning rate is high the val loss "
        "is too noisy to judge, and a dip then is not kept as the best. With a `patience`, early stopping never "
        "acts before it either. None: two thirds of `epochs` (30 of the default 45), where the cosine decay has "
        "brought the learning rate to a quarter of its peak; a fixed 20 let a 45-epoch run stop at epoch 26, at "
        "0.4 of the peak (docs/benchmarks.md)."))
    dropout: float = Field(0.5, ge=0, lt=1)
    ema_epochs: float = Field(0.0, ge=0, le=1000, description=(
        "Validate, checkpoint and serve an exponential moving average of the weights over about this many "
        "epochs (decay per step 1 - 1/(ema_epochs x steps per epoch)) instead of the last step's weights; "
        "0: off. See docs/benchmarks.md."))
    augment: bool = Field(True, description="Random flips, 90-degree rotations and colour jitter while training.")
    color_jitter: float = Field(0.1, ge=0, lt=1, description="Brightness/contrast/saturation jitter; 0: off. "
                                                            "See bench/augmentation.py for why 0.1.")
    hue_jitter: float = Field(0.0, ge=0, le=0.5, description="Hue jitter (slow on CPU; see build_augmentation).")
    hed_jitter: float = Field(0.05, ge=0, lt=1, description="Stain-amount jitter in HED space (Tellez et al. 2019); "
                                                          "0: off.")
    stain_vector_jitter: float = Field(0.2, ge=0, lt=1, description=(
        "Turns the haematoxylin and eosin colours themselves, as another lab's stains would be; 0: off. "
        "See bench/stain_sweep.sh for why 0.2."))
    blur_sigma: float = Field(0.0, ge=0, le=3, description=(
        "Gaussian blur of each training image with a standard deviation drawn from U(0, blur_sigma) pixels, "
        "as another scanner's focus would blur it; 0: off. See docs/benchmarks.md."))
    scale_jitter: float = Field(0.0, ge=0, le=0.5, description=(
        "Zoom each training image about its centre by a factor from 1/(1 + scale_jitter) to 1 + scale_jitter, "
        "as another scanner's pixel size would; 0: off. See docs/benchmarks.md."))
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description=(
        "Train towards labels eps/2 and 1 - eps/2 instead of 0 and 1 (validation loss stays plain); 0: off. "
        "0.1 scored higher on held-out stains in two seeds at 45 epochs: see docs/benchmarks.md."))
    focal_gamma: float = Field(0.0, ge=0, le=5, description=(
        "Focal loss (Lin et al. 2017): each training image's loss weighted by (1 - p_t) ** gamma, so that patches "
        "the model already gets right count less; 0: plain cross-entropy. Validation loss stays plain. "
        "See docs/benchmarks.md."))
    augment_on: Literal["auto", "loader", "device"] = Field("auto", description=(
        "Where training batches are augmented: in the loader (CPU), or on the training device after the copy. "
        "auto: on a CUDA GPU from batch 128 up the device, else the loader (see train.augments_on_device). "
        "Same draws either way."))
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 means all cores.")
    deterministic: bool = Field(False, description=(
        "Bit-reproducible CUDA runs: deterministic cuDNN convolutions instead of the fastest timed ones. "
        "A CPU run is reproducible either way."))
    num_workers: int | None = Field(None, ge=0, description=(
        "DataLoader worker processes. None: none on a CPU, where loading shares the cores with the model; "
        "on a GPU, up to 8 per training process, leaving a core free. The count never changes results."))

    @model_validator(mode="after")
    def _width_fits_the_model(self) -> "TrainConfig":
        if self.width != SEED_CNN_WIDTH and not self.model.startswith("simple_cnn"):
            raise ValueError(f"width applies to the simple_cnn models only; {self.model} keeps torchvision's widths")
        return self

    @property
    def early_stopping_from(self) -> int:
        """The first epoch after which early stopping may end a run: ``min_epochs``, or two
        thirds of the schedule, so that it moves with ``epochs``."""
        return self.min_epochs if self.min_epochs is not None else math.ceil(2 * self.epochs / 3)

    def model_kwargs(self) -> dict[str, Any]:
        """The architecture's arguments, as a checkpoint records them: the width only where it
        is not the original's, so checkpoints of the default read as they always have."""
        return {"dropout": self.dropout, **({"width": self.width} if self.width != SEED_CNN_WIDTH else {})}


class EvalConfig(_Frozen):
    """How a model is scored: the retrain's challenger and champion on the hold-out, and ``histo evaluate``."""

    tta: bool = Field(True, description="Average each patch's 8 flips/rotations (8x the inference time).")
    target_sensitivity: float = Field(0.95, gt=0, le=1, description=(
        "The operating point is chosen on validation (or cross-fitted) to reach this sensitivity."))
    bootstrap: int = Field(1000, ge=100, description="Resamples for the AUC's bootstrap CI.")
    batch_size: int = Field(256, ge=1, description="Images per inference batch (no gradients: larger than "
                                                   "training's fits in the same memory).")


class GateConfig(_Frozen):
    """When a challenger replaces the champion."""

    auc_floor: float = Field(0.8, ge=0, le=1, description="A challenger below this test AUC is never promoted.")
    min_improvement: float = Field(
        0.0, ge=0, description="Required AUC margin over the champion on the same hold-out."
    )
    significance: Literal["none", "delong"] = Field(
        "none", description="Also require DeLong's paired test to find the improvement significant."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired test.")
    max_sensitivity_drop: float | None = Field(None, ge=0, le=1, description=(
        "Also require the challenger's sensitivity at its operating point (the threshold chosen on "
        "validation for evaluation.target_sensitivity) to be at most this much below the champion's on the "
        "same hold-out; unset: off. Off by default because on a nightly hold-out of a few hundred images "
        "(tens of tumour patches) that sensitivity moves by 0.05-0.10 between equally good models, so a "
        "tight margin rejects at random; set it (0.05 or more) where the hold-out has hundreds of tumour "
        "patches."))


class StoreConfig(_Frozen):
    """Where versions, the champion pointer and run records go. Credentials never appear
    here: S3 uses the standard AWS chain (environment, profile, instance role)."""

    uri: Url = Field("./histo-store", description="A folder, file:///path or s3://bucket/prefix.")
    endpoint_url: Url | None = Field(
        None, description="S3-compatible endpoint (MinIO, Swift, ...); default: AWS or AWS_ENDPOINT_URL_S3.")
    region: str | None = Field(None, description="S3 region; default: the AWS configuration chain.")
    connect_timeout_s: float = Field(5, gt=0, description="Seconds to wait for an S3 connection.")
    read_timeout_s: float = Field(10, gt=0, description=(
        "Seconds to wait for an S3 answer once connected; a hung endpoint fails the call after "
        "max_attempts times this, not after minutes."))
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per S3 call (throttling, network faults).")


class OperationsConfig(_Frozen):
    """How scheduled runs share a machine and recover, unattended."""

    lock_dir: str = Field("~/.cache/histo-retrain/locks", description=(
        "Machine-wide folder of the run guard's lock files: one retrain at a time per data root and "
        "per GPU on this machine, whichever deployment started it (histo_core.run_guard)."))
    max_attempts: int = Field(3, ge=1, le=20, description=(
        "Runs of one flow run, counting the automatic retries after a crash (automations.yaml); "
        "a run that has crashed this often ends Failed and emits histo.retrain.gave-up."))


class RetrainConfig(_Frozen):
    """Everything one retrain run needs; the Prefect UI renders it as a form."""

    data: Url = Field(..., description="Data root: a folder in any supported layout, or a root of batches/.")
    store: StoreConfig = StoreConfig()
    workdir: str = Field("./histo-work", description="Local scratch folder for caches and run files.")
    model_name: str = Field("pcam-cnn", description="Registry name the versions are filed under.")
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    operations: OperationsConfig = OperationsConfig()


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, section by section: ``{"train": {"epochs": 50}}``
    changes one field and keeps the rest of ``train``."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_overrides(config: RetrainConfig, overrides: dict[str, Any] | None) -> RetrainConfig:
    """A deployment's config with a run's partial overrides; unknown fields are refused by
    name (Prefect replaces a whole parameter, so partial changes travel apart)."""
    if not overrides:
        return config
    return RetrainConfig.model_validate(merge_overrides(config.model_dump(mode="json"), overrides))


class WatchConfig(_Frozen):
    """What the watcher looks at, and where it remembers what it has seen."""

    data: Url = Field(..., description="Data root whose batches/<batch-id>/ folders are watched.")
    store: StoreConfig = StoreConfig()


class PredictConfig(_Frozen):
    """Score a folder or prefix of patches with the champion, a named version, or a
    weights file; shared by ``histo predict`` and the predict deployment."""

    data: Url = Field(..., description="Folder of patches (any supported layout, or just image files).")
    out: str = Field("predictions.csv", description=(
        "CSV to write: exactly id,label (tumour probability); images that could not be scored go to "
        "OUT.errors.csv (id,error)."))
    store: StoreConfig = StoreConfig()
    model_name: str = Field("pcam-cnn", description="Registry model whose version scores.")
    version: str | None = Field(None, description="Registry version to use; default: the current champion.")
    checkpoint: str | None = Field(None, description=(
        "A local weights file (best.pt, or a version's model.pt) to use instead of the registry."))
    order: str | None = Field(None, description=(
        "A CSV with an id column (Kaggle's sample_submission.csv) that sets the order of the rows."))
    tta: bool = Field(False, description=(
        "Average each patch's 8 flips/rotations: 8x the time, a slightly better AUC on unseen slides."))
    batch_size: int = Field(256, ge=1, description="Images per inference batch.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    adapt_to_data: bool = Field(False, description=(
        "Re-estimate the network's BatchNorm statistics on the images scored (at least 256 readable ones, "
        "all from one site) before scoring them: a better ranking on a stain the model was not trained on "
        "(held-out stain AUC +0.009 and +0.017, two seeds), one more pass over the images. Off by default: "
        "each probability then depends on the other images scored with it, and the operating point's "
        "sensitivity on their tumour fraction (see docs/benchmarks.md)."))

    @model_validator(mode="after")
    def _one_model(self) -> "PredictConfig":
        if self.checkpoint is not None and self.version is not None:
            raise ValueError("give either checkpoint (a weights file) or version (from the registry), not both")
        return self
