"""Model definitions, built by name.

``simple_cnn`` is the network of the original project: five blocks of Conv3x3 ->
BatchNorm -> ReLU -> MaxPool (32 -> 512 channels), dropout and a fully connected head
ending in a single logit (trained with BCEWithLogits, the numerically stable form of
Sigmoid + BCELoss), and the default. ``simple_cnn_ibn`` is the same network with IBN-Net's
half-instance normalisation in its first two blocks: trained for 10 epochs on one staining
group of the shared patches it scored higher than the original on the other group, but at
30 epochs it scored lower there (0.882-0.888 in two seeds against 0.901-0.904),
for about the same AUC on the same-slide test patches (docs/benchmarks.md), so it is not the
default. torchvision's ResNets, trained from scratch with the same one-logit head, are
registered for comparison (``TrainConfig.model``).
"""

from __future__ import annotations

from typing import Any, Callable, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from histo_core.config import SEED_CNN_WIDTH, ModelName, TrainConfig

BLOCKS = 5  # each halves the side: 96 -> 3
# Per-channel statistics of H&E patches (PCam training set); used to centre the input.
PCAM_MEAN = (0.702, 0.546, 0.696)
PCAM_STD = (0.239, 0.282, 0.216)


def _conv_block(in_ch: int, out_ch: int, norm: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BN makes a bias redundant
        norm if norm is not None else nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class IBNBlock(nn.Module):
    """A conv block with IBN-Net's normalisation (Pan et al., ECCV 2018): the first half of
    its output channels normalised per image (instance normalisation), the rest per batch.

    Per-image statistics of shallow feature maps carry an image's appearance (its stain,
    its scanner) more than its content, so normalising them away there helps a network
    carry across appearance shifts; the batch-normalised half keeps what the contrast
    between images says (how dark a nucleus is).

    Built as two half-width blocks whose pooled outputs are concatenated: the same
    function of the same parameters as one conv whose output is split, normalised and
    joined (ReLU and pooling act channel by channel), with the same initial weights from
    the same seed (the instance half's conv is drawn first), but without splitting and
    joining the full-resolution maps: that cost 1.6x the seed CNN's training time on
    two CPU cores; this costs 1.1x. Instance normalisation is ``GroupNorm`` with one
    channel per group, which keeps channels_last where ``InstanceNorm2d`` does not."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = out_ch // 2
        self.instance = _conv_block(in_ch, half, nn.GroupNorm(half, half))
        self.batch = _conv_block(in_ch, out_ch - half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.instance(x), self.batch(x)], dim=1)


def block_channels(width: int = SEED_CNN_WIDTH) -> tuple[int, ...]:
    """Output channels of the five blocks: ``width`` doubled in each (32 -> 512 in the original)."""
    return tuple(width * 2 ** i for i in range(BLOCKS))


class SimpleCNN(nn.Module):
    """The original 5-block CNN for 96x96 RGB patches; outputs one logit per image.

    ``ibn_blocks``: how many of the first blocks are ``IBNBlock`` (0: the original
    network). ``width``: the first block's channels (``TrainConfig.width``)."""

    def __init__(self, dropout: float = 0.5, hidden: int = 256, image_size: int = 96, ibn_blocks: int = 0,
                 width: int = SEED_CNN_WIDTH) -> None:
        super().__init__()
        blocks, in_ch, channels = [], 3, block_channels(width)
        for i, out_ch in enumerate(channels):
            blocks.append(IBNBlock(in_ch, out_ch) if i < ibn_blocks else _conv_block(in_ch, out_ch))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** BLOCKS  # 96 -> 3
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels[-1] * side * side, hidden),
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


def _simple_cnn_ibn(dropout: float = 0.5, hidden: int = 256, image_size: int = 96,
                    width: int = SEED_CNN_WIDTH) -> SimpleCNN:
    # IBN-Net puts it in the shallow half of a network and keeps deep layers BatchNorm
    return SimpleCNN(dropout, hidden, image_size, ibn_blocks=2, width=width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "simple_cnn_ibn": _simple_cnn_ibn,
    **{arch: _resnet(arch) for arch in ("resnet18", "resnet34", "resnet50")},
}
if set(MODELS) != set(get_args(ModelName)):
    raise ImportError(f"histo_core.config.ModelName {get_args(ModelName)} must list exactly MODELS {sorted(MODELS)}")


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dropout: float = TrainConfig.model_fields["dropout"]  # the config's own bounds


class SimpleCNNArguments(_Arguments):
    """What ``SimpleCNN`` accepts, with bounds that keep it a patch classifier: a
    checkpoint asking for a 10**7-unit head would otherwise allocate 184 GB."""

    hidden: int = Field(256, ge=1, le=4096)
    image_size: int = Field(96, ge=2 ** BLOCKS, le=1024, description="at least 32: five 2x poolings")
    width: int = TrainConfig.model_fields["width"]


ARGUMENTS: dict[str, type[_Arguments]] = {name: SimpleCNNArguments if name.startswith("simple_cnn") else _Arguments
                                          for name in MODELS}


def model_arguments(name: str, kwargs: Any) -> dict[str, Any]:
    """``kwargs`` checked against what architecture ``name`` accepts (known name, known
    arguments, each in bounds); raises ``ValueError`` saying which is wrong."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"model arguments must be a mapping, not {type(kwargs).__name__}")
    from pydantic import ValidationError

    try:
        return ARGUMENTS[name](**kwargs).model_dump(exclude_unset=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"model {name!r}: {problems}") from None


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name, its arguments checked first (``model_arguments``)."""
    arguments = model_arguments(name, kwargs)  # before the lookup: an unknown name lists the known ones
    return MODELS[name](**arguments)
