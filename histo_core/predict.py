"""Score patches with a model: a folder of images in, a Kaggle submission CSV out.

The data may be unlabelled (Kaggle's ``test/`` folder): any supported layout is used for
its ids, otherwise every image file under the root is scored with its file name stem as
id. Files that cannot be read (or have the wrong size) are listed with their error in a
separate CSV, never a crash, and never as an empty label in the submission.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from histo_core.config import PredictConfig
from histo_core.data.images import checked_stat, open_image
from histo_core.data.sources import IMAGE_SUFFIXES, DataSourceError, list_images
from histo_core.evaluate import sigmoid
from histo_core.inference import BatchProgress, adapt_batchnorm, load_model, pick_device, score
from histo_core.tables import write_csv

log = logging.getLogger(__name__)


def list_patches(root: Path | str) -> pd.DataFrame:
    """``id, path`` of every image to score under ``root``; ids are unique (a submission
    with one id twice would be scored against whichever row the reader keeps)."""
    try:
        table = list_images(root)
        table = table.loc[table["path"] != "", ["id", "path"]].reset_index(drop=True)
    except DataSourceError:
        files = sorted(str(p) for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataSourceError(f"{root}: no images to score ({', '.join(IMAGE_SUFFIXES)})") from None
        table = pd.DataFrame({"id": [Path(f).stem for f in files], "path": files})
    require_unique_ids(table, str(root))
    return table


def require_unique_ids(table: pd.DataFrame, where: str) -> None:
    """Raise ``DataSourceError`` naming the first ids that occur more than once, with their files."""
    repeated = table[table["id"].duplicated(keep=False)]
    if len(repeated):
        first = repeated.groupby("id", sort=False)["path"].apply(list).head(5)
        listed = "; ".join(f"{i[:80]!r} in {', '.join(p or '(no file)' for p in paths[:3])}"
                           for i, paths in first.items())
        raise DataSourceError(f"{where}: {repeated['id'].nunique()} id(s) occur more than once, and a submission "
                              f"needs one row per id: {listed}. Rename the files or score the batches separately")


class _Decoded(Dataset):
    """Decodes each file once; unreadable or off-size images come back as zeros + error."""

    def __init__(self, paths: list[str], size: int = 96, root: str | None = None) -> None:
        self.paths, self.size, self.root = paths, size, root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            checked_stat(self.paths[i], self.root)  # nothing outside the folder, no pipe that blocks
            with open_image(self.paths[i]) as img:
                if img.size != (self.size, self.size):
                    raise ValueError(f"size {img.width}x{img.height}, expected {self.size}x{self.size}")
                pixels = np.asarray(img.convert("RGB"))
            return torch.from_numpy(pixels.copy()).permute(2, 0, 1), ""
        except Exception as exc:  # noqa: BLE001 - reported per row, the rest is still scored
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), f"unreadable image: {exc}"


def score_paths(checkpoint: Path | str, paths: list[str], device: str = "auto", batch_size: int = 256,
                workers: int = 0, tta: bool = False, root: str | None = None,
                progress: BatchProgress | None = None, adapt: bool = False) -> tuple[np.ndarray, list[str]]:
    """Logits of the images at ``paths`` (NaN where they could not be scored) and errors.

    ``root``: the folder the paths must stay inside once links are resolved. ``adapt``:
    first re-estimate the model's BatchNorm statistics on these images
    (``inference.adapt_batchnorm``: one more pass over them, without TTA)."""
    torch_device = pick_device(device)
    model = load_model(checkpoint, torch_device)
    loader = DataLoader(_Decoded(paths, root=root), batch_size, num_workers=workers,
                        pin_memory=torch_device.type == "cuda")
    if adapt:
        log.info("re-estimating BatchNorm statistics on the %d images to score (one pass, before scoring)", len(paths))
        used = adapt_batchnorm(model, loader, torch_device)
        log.info("BatchNorm statistics re-estimated on %d readable images of the %d to score", used, len(paths))
    logits, batch_errors = score(model, loader, torch_device, tta, progress)
    errors = [e for batch in batch_errors for e in batch]
    logits[np.array(errors, dtype=str) != ""] = np.nan
    return logits, errors


def score_files(checkpoint: Path | str, paths: list[str], device: str = "auto", batch_size: int = 256,
                workers: int = 0, tta: bool = False, root: str | None = None,
                progress: BatchProgress | None = None, adapt: bool = False) -> tuple[np.ndarray, list[str]]:
    """Tumour probabilities of the images at ``paths`` (NaN where unreadable) and errors."""
    logits, errors = score_paths(checkpoint, paths, device, batch_size, workers, tta, root, progress, adapt)
    return sigmoid(logits), errors


@dataclass(frozen=True)
class Predictions:
    """Where ``predict_folder`` wrote, and how many images it scored and could not score."""

    csv: Path
    errors_csv: Path | None
    scored: int
    failed: int


def errors_path(out_csv: Path) -> Path:
    """``preds.csv`` -> ``preds.errors.csv``: the rows that could not be scored, and why."""
    return out_csv.with_name(f"{out_csv.stem}.errors.csv")


def predict_folder(checkpoint: Path | str, data: Path | str, out_csv: Path | str, device: str = "auto",
                   batch_size: int = 256, workers: int = 0, tta: bool = False,
                   order: Path | str | None = None, progress: BatchProgress | None = None,
                   adapt: bool = False) -> Predictions:
    """Write exactly ``id,label`` (label = tumour probability), as a Kaggle submission
    expects; images that could not be scored go to ``<out>.errors.csv`` (``id,error``).

    ``order``: a ``sample_submission.csv`` whose ids give the rows' order; an id there
    without an image here is an error row. ``adapt``: see ``PredictConfig.adapt_to_data``.
    """
    table = list_patches(data)
    probability, errors = score_files(checkpoint, table["path"].tolist(), device, batch_size, workers, tta,
                                      root=os.path.realpath(data), progress=progress, adapt=adapt)
    scored = pd.DataFrame({"id": table["id"], "label": probability, "error": errors})
    if order is not None:
        wanted = pd.read_csv(order, dtype={"id": str}, usecols=["id"], keep_default_na=False)
        require_unique_ids(wanted.assign(path=""), str(order))
        wanted = wanted["id"]
        scored = wanted.to_frame().merge(scored, on="id", how="left")
        scored["error"] = scored["error"].fillna(f"no image with this id under {data}")
    failed = scored[scored["error"] != ""]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(scored.loc[scored["error"] == "", ["id", "label"]], out_csv)
    errors_csv = errors_path(out_csv)
    if len(failed):
        write_csv(failed[["id", "error"]], errors_csv)
        for row in failed.head(10).itertuples():
            log.warning("could not score %s: %s", row.id, row.error)
    else:
        errors_csv.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    log.info("scored %d patches (%d could not be scored) -> %s", len(scored) - len(failed), len(failed), out_csv)
    return Predictions(out_csv, errors_csv if len(failed) else None, len(scored) - len(failed), len(failed))


def weights_for(config: PredictConfig, folder: Path | str) -> tuple[Path, str]:
    """The weights ``config`` names and a line saying which they are: its checkpoint file,
    or the registry's named version or champion, fetched (checksum-verified) into ``folder``."""
    if config.checkpoint is not None:
        return Path(config.checkpoint), f"checkpoint {config.checkpoint}"
    from histo_core.registry import open_registry

    registry = open_registry(config.store, config.model_name)
    version, weights = registry.fetch_weights(Path(folder), config.version)
    role = "champion" if config.version is None else "version"
    return weights, f"{config.model_name} {version} ({role} of {registry.store.uri})"
