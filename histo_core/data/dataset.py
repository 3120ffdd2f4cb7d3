"""A torch Dataset over the decoded pixel cache, with the augmentations used in training.

Items are uint8 ``(3, H, W)`` tensors: conversion to float and normalisation happen on
the training device (``to_model_input``), so a GPU receives a quarter of the bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from histo_core.model import PCAM_MEAN, PCAM_STD


def random_dihedral(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations: tissue has no canonical orientation."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    image = torch.rot90(image, k, dims=(1, 2))
    return image.flip(2) if flip % 2 else image


class PatchDataset(Dataset):
    """Patches ``pixels[indices]`` with their labels; optionally augmented."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray, augment: bool = False):
        self.pixels, self.labels, self.indices, self.augment = pixels, labels, indices, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.indices[i]
        image = torch.from_numpy(np.array(self.pixels[row])).permute(2, 0, 1)  # (H,W,C) -> (C,H,W)
        if self.augment:
            image = random_dihedral(image)
        return image, torch.tensor(float(self.labels[row]))


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) -> normalised float on ``device``, channels_last (faster convs)."""
    mean = torch.tensor(PCAM_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PCAM_STD, device=device).view(1, 3, 1, 1)
    x = batch.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)
