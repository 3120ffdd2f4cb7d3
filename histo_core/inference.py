"""Scoring patches with a model: the one path that training's validation, ``evaluate``,
``predict`` and the retrain flow all use, so the same image and checkpoint get the same
probability wherever they are scored (same device choice, same autocast, same TTA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_core.checkpoint import read_checkpoint
from histo_core.data.dataset import dihedral_views, to_model_input
from histo_core.errors import DeviceUnavailableError, TooFewImagesToAdapt
from histo_core.model import create_model

BatchProgress = Callable[[int], None]  # called with the number of images scored so far


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless a device is named. A named device this
    machine lacks fails here, with what it has, not at the first tensor moved there."""
    if name != "auto":
        return _named_device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _named_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            has = f"{count} CUDA GPU(s)" if count else "no CUDA GPU this torch can use"
            raise DeviceUnavailableError(
                f"device {name!r}: this machine has {has} (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}); use device auto or cpu, or install the torch build for its driver")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device {name!r}: Apple's MPS is not available here; use device auto or cpu")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the GPU has it (no loss scaling needed), else fp16; None on CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(checkpoint: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint written by training (weights only, never code)."""
    state = read_checkpoint(checkpoint, map_location=device)
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=torch.channels_last).eval()


@torch.no_grad()
def score(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], device: torch.device,
          tta: bool = False, progress: BatchProgress | None = None) -> tuple[np.ndarray, list[Any]]:
    """Logits of every image of ``batches`` of ``(uint8 images, tag)``, in order, and the
    tags (labels, error messages) of each batch.

    With ``tta``, each logit is the mean over the 8 dihedral views of the patch (tissue
    has no orientation, so each view is an equally valid look at the same image).
    """
    model.eval()
    dtype = amp_dtype(device)
    logits, tags, done = [], [], 0
    for images, tag in batches:
        x = to_model_input(images, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = torch.stack([model(v).float() for v in (dihedral_views(x) if tta else [x])])
        logits.append(out.mean(0).cpu())
        tags.append(tag)
        done += len(images)
        if progress is not None:
            progress(done)
    return (torch.cat(logits).numpy() if logits else np.zeros(0, np.float32)), tags


# Fewer images than this give BatchNorm statistics too noisy to trust (one inference batch).
MIN_ADAPT_IMAGES = 256


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], device: torch.device,
                    minimum: int = MIN_ADAPT_IMAGES) -> int:
    """Re-estimate every BatchNorm layer's statistics on the images of ``batches`` (unlabelled
    test-time adaptation, "AdaBN": Li et al., *Revisiting batch normalization for practical
    domain adaptation*, 2016); returns how many images it used.

    A new site's stain and scanner shift the early feature maps' means and variances, and a
    network normalising them with its training statistics scores the site's images as if
    they were darker or paler tissue. Normalising with the site's own statistics removes
    that shift (held-out stain AUC +0.009 and +0.017 with TTA; docs/benchmarks.md). The statistics
    also carry the site's tumour fraction, so the operating point's sensitivity then
    depends on it: a trade the caller chooses (off by default everywhere).

    ``batches`` yield ``(uint8 images, tags)``; where the tags are strings (``predict``'s
    error per image), images with an error (decoded as zeros) are left out. With fewer than
    ``minimum`` readable images the model is left as it was and ``TooFewImagesToAdapt``
    says so."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches, not an exponential one
        m.train()
    used, dtype = 0, amp_dtype(device)
    try:
        for images, tags in batches:
            if isinstance(tags, (list, tuple)):
                images = images[[not tag for tag in tags]]
            if len(images):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model(to_model_input(images, device))
                used += len(images)
    finally:
        model.eval()
        for m, (mean, var, count, momentum) in zip(norms, saved):
            m.momentum = momentum
            if used < minimum:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    if used < minimum:
        raise TooFewImagesToAdapt(f"adapting to the data needs at least {minimum} readable images, and "
                                  f"there are {used}: score these without adapting, or together with more of "
                                  "the same site's patches")
    return used


def score_labelled(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                   tta: bool = False, progress: BatchProgress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a labelled data set's batches, in order."""
    logits, labels = score(model, batches, device, tta, progress)
    return logits, (torch.cat(labels).numpy() if labels else np.zeros(0, np.float32))


def score_dataset(model: nn.Module, dataset: Dataset, device: torch.device, tta: bool = False,
                  batch_size: int = 256, progress: BatchProgress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every item of a labelled ``dataset``, in order."""
    return score_labelled(model, DataLoader(dataset, batch_size), device, tta, progress)
