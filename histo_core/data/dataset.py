"""A torch Dataset over the decoded pixel cache, with the augmentations used in training.

Items are uint8 ``(3, H, W)`` tensors: conversion to float and normalisation happen on
the training device (``to_model_input``), so a GPU receives a quarter of the bytes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from histo_core.model import PCAM_MEAN, PCAM_STD


def random_dihedral(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations: tissue has no canonical orientation."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    image = torch.rot90(image, k, dims=(1, 2))
    return image.flip(2) if flip % 2 else image


def dihedral_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a (B, C, H, W) batch, for test-time augmentation."""
    return [torch.rot90(v, k, dims=(2, 3)).contiguous(memory_format=torch.channels_last)
            for v in (batch, batch.flip(3)) for k in range(4)]


class RandomDihedral(torch.nn.Module):
    """torchvision v2 has flips but no exact 90-degree rotation; this adds all 8 symmetries."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return random_dihedral(image)


# Ruifrok & Johnston's stain matrix (rows: haematoxylin, eosin, DAB optical densities).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


class RandomHEDJitter(torch.nn.Module):
    """Stain augmentation in haematoxylin-eosin-DAB space (Tellez et al., 2019, "HED-light").

    Each stain's concentration is scaled by U(1-sigma, 1+sigma) and shifted by
    U(-sigma, sigma): the colour changes a new lab, stain batch or scanner brings, which
    hue/saturation jitter in RGB imitates poorly. Linear algebra on optical densities,
    so it costs about as much as one colour jitter op.
    """

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # uint8 (3, H, W)
        od = -torch.log((image.float() + 1) / 256).reshape(3, -1)  # optical density, (3, H*W)
        hed = _HED_FROM_RGB.T @ od
        alpha = 1 + (torch.rand(3, 1) * 2 - 1) * self.sigma
        beta = (torch.rand(3, 1) * 2 - 1) * self.sigma
        rgb = torch.exp(-(_RGB_FROM_HED.T @ (hed * alpha + beta))) * 256 - 1
        return rgb.clamp_(0, 255).round_().to(torch.uint8).reshape(image.shape)


def build_augmentation(color_jitter: float = 0.1, hue_jitter: float = 0.0,
                       hed_jitter: float = 0.05) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training augmentation on uint8 (C,H,W): dihedral symmetries, stain and colour jitter.

    HED jitter models stain variation between labs and scanners; brightness/contrast/
    saturation jitter the rest of the imaging chain. Hue jitter is separate and off by
    default: torchvision's HSV round trip makes it ~4x slower than brightness/contrast/
    saturation together (1,900 vs 7,400 img/s on one CPU core), so loading, not the
    model, would become the bottleneck on a small CPU machine.
    """
    steps: list[torch.nn.Module] = [RandomDihedral()]
    if hed_jitter > 0:
        steps.append(RandomHEDJitter(hed_jitter))
    if color_jitter > 0 or hue_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                    saturation=color_jitter, hue=hue_jitter))
    return v2.Compose(steps)


class PatchDataset(Dataset):
    """Patches ``pixels[indices]`` with their labels; ``transform`` (if any) augments them."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.pixels, self.labels, self.indices, self.transform = pixels, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.indices[i]
        image = torch.from_numpy(np.array(self.pixels[row])).permute(2, 0, 1)  # (H,W,C) -> (C,H,W)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(float(self.labels[row]))


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) -> normalised float on ``device``, channels_last (faster convs)."""
    mean = torch.tensor(PCAM_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PCAM_STD, device=device).view(1, 3, 1, 1)
    x = batch.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)
