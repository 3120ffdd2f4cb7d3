"""Model definitions, built by name.

The default, ``simple_cnn``, is the network of the original project: five blocks of
Conv3x3 -> BatchNorm -> ReLU -> MaxPool (32 -> 512 channels), dropout and a fully
connected head ending in a single logit (trained with BCEWithLogits, the numerically
stable form of Sigmoid + BCELoss). torchvision's ResNets, trained from scratch with
the same one-logit head, are registered for comparison (``TrainConfig.model``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

CHANNELS = (32, 64, 128, 256, 512)
# Per-channel statistics of H&E patches (PCam training set); used to centre the input.
PCAM_MEAN = (0.702, 0.546, 0.696)
PCAM_STD = (0.239, 0.282, 0.216)


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BN makes a bias redundant
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """The original 5-block CNN for 96x96 RGB patches; outputs one logit per image."""

    def __init__(self, dropout: float = 0.5, hidden: int = 256, image_size: int = 96) -> None:
        super().__init__()
        blocks, in_ch = [], 3
        for out_ch in CHANNELS:
            blocks.append(_conv_block(in_ch, out_ch))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** len(CHANNELS)  # 96 -> 3
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(CHANNELS[-1] * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)  # (B,)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet from scratch (no pretrained weights: nothing is downloaded)
    with dropout and one logit in place of its 1000-class layer."""

    def __init__(self, arch: str, dropout: float = 0.5) -> None:
        super().__init__()
        from torchvision import models

        self.net = getattr(models, arch)(weights=None)
        self.net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.net.fc.in_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,)


def _resnet(arch: str) -> Callable[..., nn.Module]:
    return lambda dropout=0.5: TorchvisionResNet(arch, dropout)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    **{arch: _resnet(arch) for arch in ("resnet18", "resnet34", "resnet50")},
}


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name; an unknown name lists the valid ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)
