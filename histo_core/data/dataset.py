"""A torch Dataset over the decoded pixel cache, with the augmentations used in training.

Items are uint8 ``(3, H, W)`` tensors: conversion to float and normalisation happen on
the training device (``to_model_input``), so a GPU receives a quarter of the bytes.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from histo_core.model import PCAM_MEAN, PCAM_STD


def to_device(draws: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without stalling a GPU: a plain copy from pageable
    memory would make the CPU wait for all queued GPU work; a pinned one is queued behind it."""
    if device.type != "cuda":
        return draws.to(device)
    return draws.pin_memory().to(device, non_blocking=True)


class RandomDihedral(torch.nn.Module):
    """One of the 8 flips/90-degree rotations per image of a (B, C, H, W) batch: tissue has
    no canonical orientation. Image i turns ``k`` quarter turns, then mirrors if ``flip`` is
    odd, both drawn per image from the CPU generator, so a batch gets the same views on
    any device.

    On a CPU a plain loop is fastest (0.5 ms per 64 images, vs 1.6 for masked indexing).
    On a GPU each small op is a kernel launch the CPU must issue, so there all 8 views of
    the batch are made at once and each image picks its own: ~20 launches, not ~200.
    """

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        k, flip = torch.randint(0, 4, (len(batch), 2)).T
        if batch.device.type == "cpu":
            return dihedral_each(batch, k, flip)
        return dihedral_gathered(batch, k, flip)


def dihedral_each(batch: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Image i of ``batch`` turned ``k[i]`` quarter turns, then mirrored if ``flip[i]`` is odd: a loop."""
    views = [torch.rot90(image, r, dims=(1, 2)) for image, r in zip(batch, k.tolist())]
    return torch.stack([v.flip(2) if f % 2 else v for v, f in zip(views, flip.tolist())])


def dihedral_gathered(batch: torch.Tensor, k: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``dihedral_each``'s result from all 8 views of the batch, each image picking its own."""
    turned = [torch.rot90(batch, r, dims=(2, 3)) for r in range(4)]
    views = torch.stack(turned + [v.flip(3) for v in turned])  # view 4 * (flip % 2) + k
    pick = to_device(4 * (flip % 2) + k, batch.device)
    return views[pick, torch.arange(len(batch), device=batch.device)]


def dihedral_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a (B, C, H, W) batch, for test-time augmentation."""
    return [torch.rot90(v, k, dims=(2, 3)).contiguous(memory_format=torch.channels_last)
            for v in (batch, batch.flip(3)) for k in range(4)]


class EachImage(torch.nn.Module):
    """Applies a per-image transform to every image of a (B, C, H, W) batch, each with its
    own draw: torchvision's hue jitter draws one factor per call."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in batch])


# Ruifrok & Johnston's stain matrix (rows: haematoxylin, eosin, DAB optical densities).
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
# torchvision's grey weights, so contrast and saturation match its ColorJitter.
_LUMA = (0.2989, 0.587, 0.114)


@functools.cache
def _colour_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB-from-HED, HED-from-RGB and the grey weights on ``device``, made once per device."""
    rgb_from_hed = torch.tensor(RGB_FROM_HED)
    return (rgb_from_hed.to(device), torch.linalg.inv(rgb_from_hed).to(device),
            torch.tensor([_LUMA], device=device))


def shift_colours(batch: torch.Tensor, stain_scale: torch.Tensor, stain_shift: torch.Tensor,
                  bcs: torch.Tensor, stain_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Re-stain a uint8 (B, 3, H, W) batch, then change its brightness, contrast and saturation.

    For image i, each stain amount (haematoxylin, eosin, DAB) is multiplied by
    ``stain_scale[i]`` and shifted by ``stain_shift[i]`` (both (B, 3)), then turned back
    into colour with ``stain_vectors[i]`` (3x3, rows the stains' optical-density
    directions; default Ruifrok-Johnston's, the ones the amounts were measured with, so
    only the amounts change); ``bcs[i]`` holds
    brightness, contrast and saturation factors as torchvision's ``adjust_*`` functions
    define them. Without clamps between them those three are linear maps that commute, so
    they are applied as one (clamped once; torchvision clamps after each, in random order).

    The re-staining is a 3x3 map per image between a log and an exp in optical-density
    space, so the whole batch costs two transcendental passes, one batched matmul and a
    single uint8 round trip. Batches also let torch use both cores of a small machine,
    which 96x96 images alone are too small for. Loading went from 4,600 to 15,000 img/s on
    2 threads (5,300 to 9,000 on one).
    """
    n = len(batch)
    rgb_from_hed, hed_from_rgb, luma = _colour_constants(batch.device)
    log_rgb = batch.reshape(n, 3, -1).float().add_(1).log_()
    # od = log 256 - log(x + 1);  od' = R^T (scale * H^T od + shift);  x' = exp(log 256 - od') - 1
    restain = rgb_from_hed.T if stain_vectors is None else stain_vectors.transpose(1, 2)
    mix = restain @ (stain_scale[:, :, None] * hed_from_rgb.T)
    offset = math.log(256) * (1 - mix.sum(2, keepdim=True)) - restain @ stain_shift[:, :, None]
    rgb = torch.einsum("bij,bjn->bin", mix, log_rgb).add_(offset).exp_().sub_(1).clamp_(0, 255)
    # brightness b, contrast c (pivot: mean grey m), saturation s (pivot: pixel grey g): b (m + c (g - m) + c s (x - g))
    b, c, s = bcs[:, :, None, None].unbind(1)
    grey = luma @ rgb
    mean_grey = grey.mean(2, keepdim=True)
    rgb.sub_(grey).mul_(c * s).add_(grey.sub_(mean_grey).mul_(c).add_(mean_grey)).mul_(b).clamp_(0, 255)
    return rgb.round_().to(torch.uint8).reshape(batch.shape)


class RandomColourJitter(torch.nn.Module):
    """Stain jitter in haematoxylin-eosin-DAB space, then brightness/contrast/saturation, per image.

    HED (Tellez et al., 2019, "HED-light"): each stain's concentration is scaled by
    U(1-hed, 1+hed) and shifted by U(-hed, hed), the change a new stain batch or a
    thicker section brings, which RGB hue/saturation jitter imitates poorly. With
    ``vectors`` > 0 the haematoxylin and eosin colours themselves turn too: U(-vectors,
    vectors) is added to each component of their unit optical-density vectors (then made
    unit again) before the amounts are turned back into RGB. That is the change between
    labs: another haematoxylin or eosin recipe has another hue, which no amount jitter
    can reach. Then brightness, contrast and saturation factors U(1-bcs, 1+bcs), as
    torchvision's ColorJitter draws them, for the rest of the imaging chain. Works on
    whole (B, 3, H, W) batches; the factors are drawn from the CPU generator on any device.
    """

    def __init__(self, hed: float = 0.05, bcs: float = 0.0, vectors: float = 0.0) -> None:
        super().__init__()
        self.hed, self.bcs, self.vectors = hed, bcs, vectors

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        def uniform(spread: float, columns: int = 3) -> torch.Tensor:  # U(-spread, spread), one row per image
            return (torch.rand(len(batch), columns) * 2 - 1) * spread

        draws = torch.cat([1 + uniform(self.hed), uniform(self.hed), 1 + uniform(self.bcs)], 1)
        if self.vectors > 0:  # drawn only when used, so a run without it keeps its random stream
            draws = torch.cat([draws, uniform(self.vectors, 6)], 1)
        draws = to_device(draws, batch.device)
        stain_vectors = turned_stain_vectors(draws[:, 9:].view(-1, 2, 3)) if self.vectors > 0 else None
        return shift_colours(batch, *draws[:, :9].split(3, 1), stain_vectors=stain_vectors)


def turned_stain_vectors(noise: torch.Tensor) -> torch.Tensor:
    """Per-image (B, 3, 3) stain matrices: Ruifrok-Johnston's haematoxylin and eosin unit
    vectors plus ``noise`` (B, 2, 3), kept positive (optical density never is negative)
    and made unit again; DAB, absent from H&E, is left as it is."""
    rgb_from_hed = _colour_constants(noise.device)[0]
    stains = torch.nn.functional.normalize(rgb_from_hed[:2] + noise, dim=2).abs()
    return torch.cat([stains, rgb_from_hed[2:].expand(len(noise), 1, 3)], 1)


class RandomBlur(torch.nn.Module):
    """Gaussian blur of each image of a uint8 (B, C, H, W) batch, with a standard deviation
    drawn from U(0, ``max_sigma``) pixels per image: scanners focus differently, and a model
    that only knows one scanner's sharpness may read another's softer nuclei differently.
    The draw comes from the CPU generator, as every other augmentation's."""

    def __init__(self, max_sigma: float) -> None:
        super().__init__()
        self.max_sigma = max_sigma

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        sigma = to_device(torch.rand(len(batch)) * self.max_sigma, batch.device)
        return gaussian_blur_each(batch, sigma, radius=max(1, math.ceil(3 * self.max_sigma)))


def gaussian_blur_each(batch: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Image i of a uint8 (B, C, H, W) batch blurred with standard deviation ``sigma[i]``
    (a kernel of ``2 * radius + 1`` taps, edges reflected; sigma 0 leaves it as it is).
    One grouped convolution per direction for the whole batch, not one call per image.
    An image too small to reflect ``radius`` pixels gets the widest kernel it can (a
    96-pixel patch never does: the largest blur_sigma, 3, needs 9)."""
    n, c, h, w = batch.shape
    radius = min(radius, (min(h, w) - 1) // 2)
    taps = torch.arange(-radius, radius + 1, device=batch.device, dtype=torch.float32)
    kernels = torch.exp(-taps**2 / (2 * sigma.float().clamp(min=1e-3)[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B * C, taps)
    x = torch.nn.functional.pad(batch.reshape(1, n * c, h, w).float(), (radius,) * 4, mode="reflect")
    x = torch.nn.functional.conv2d(x, kernels[:, None, None, :], groups=n * c)
    x = torch.nn.functional.conv2d(x, kernels[:, None, :, None], groups=n * c)
    return x.round_().clamp_(0, 255).to(torch.uint8).reshape(batch.shape)


class RandomScale(torch.nn.Module):
    """Each image of a uint8 (B, C, H, W) batch zoomed about its centre by a factor drawn
    log-uniformly from [1 / (1 + ``max_change``), 1 + ``max_change``]: scanners differ in
    pixel size by several per cent (CAMELYON's two scanners by 7%), and the centre stays
    the centre, so the label's region moves by at most ``max_change`` of its size. Edges
    are reflected when zooming out. The draws come from the CPU generator."""

    def __init__(self, max_change: float) -> None:
        super().__init__()
        self.max_change = max_change

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        factor = torch.exp((2 * torch.rand(len(batch)) - 1) * math.log1p(self.max_change))
        return scale_each(batch, to_device(factor, batch.device))


def scale_each(batch: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image i of a uint8 (B, C, H, W) batch zoomed about its centre by ``factor[i]``
    (> 1 magnifies), bilinear, edges reflected: one ``grid_sample`` for the whole batch.
    Factor 1 gives the image back as it was."""
    theta = torch.zeros(len(batch), 2, 3, device=batch.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / factor.float()
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="reflection",
                                        align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def build_augmentation(color_jitter: float = 0.1, hue_jitter: float = 0.0, hed_jitter: float = 0.05,
                       stain_vector_jitter: float = 0.2,
                       blur_sigma: float = 0.0,
                       scale_jitter: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training augmentation of uint8 (B, C, H, W) batches, each image drawn independently:
    dihedral symmetries, stain and colour jitter, then (if asked) blur and a zoom. Each
    optional step draws after every step before it, so turning one on leaves the others'
    draws as they were.

    Hue jitter is separate and off by default: torchvision's HSV round trip, image by
    image, is ~6x slower than the stain, brightness, contrast and saturation jitter
    together (2,200 vs 13,900 img/s on one CPU core), so loading, not the model, would
    become the bottleneck on a small CPU machine. Turning the stain vectors
    (``stain_vector_jitter``) changes hue where it matters for H&E at no extra cost.
    """
    steps: list[torch.nn.Module] = [RandomDihedral()]
    if hed_jitter > 0 or color_jitter > 0 or stain_vector_jitter > 0:
        steps.append(RandomColourJitter(hed_jitter, color_jitter, stain_vector_jitter))
    if hue_jitter > 0:
        from torchvision.transforms import v2  # here, not above: importing torchvision costs a run ~2 s

        steps.append(EachImage(v2.ColorJitter(hue=hue_jitter)))
    if blur_sigma > 0:
        steps.append(RandomBlur(blur_sigma))
    if scale_jitter > 0:
        steps.append(RandomScale(scale_jitter))
    return torch.nn.Sequential(*steps)


class SeededBatch(list):
    """One batch's dataset indices, and the seed its augmentation draws from."""

    def __init__(self, indices: list[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


class SeededBatchSampler(BatchSampler):
    """Batches of ``sampler``'s indices, each with a seed drawn from ``generator`` in the
    main process.

    Loader workers otherwise augment with their own random streams: a run's augmentation
    would depend on the worker count, and a resumed run (new workers) would not repeat an
    uninterrupted one. With the seed chosen here, from a generator whose state the
    checkpoint keeps, neither happens.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, generator: torch.Generator) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.generator = generator

    def __iter__(self):
        for indices in super().__iter__():
            yield SeededBatch(indices, int(torch.randint(2**62, (), generator=self.generator)))


class PatchDataset(Dataset):
    """Patches ``pixels[indices]`` with their labels; ``transform`` (if any) augments them.

    ``transform`` takes uint8 (B, C, H, W) batches. The DataLoader fetches whole batches
    through ``__getitems__``: one gather from the cache and one augmentation call per
    batch, instead of one per image. A ``SeededBatch`` is augmented from its own seed.
    A ``deferred()`` copy leaves the augmenting to its caller, on a GPU.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.pixels, self.labels, self.indices, self.transform = pixels, labels, indices, transform
        self.is_deferred = False

    def deferred(self) -> PatchDataset:
        """The same patches, unaugmented, each item ``(image, label, seed)`` with its batch's
        seed, for the trainer to augment on its GPU with ``augment_seeded``: loader workers
        then only gather and pin (see ``train.augments_on_device`` for when that pays)."""
        twin = copy.copy(self)
        twin.is_deferred = True
        return twin

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, ...]]:
        rows = self.indices[items]
        images = torch.from_numpy(np.asarray(self.pixels[rows])).permute(0, 3, 1, 2)  # (B,H,W,C) -> (B,C,H,W)
        labels = torch.from_numpy(self.labels[rows].astype(np.float32))
        seed = getattr(items, "seed", None)
        if self.is_deferred:
            if seed is None:
                raise ValueError("a deferred PatchDataset needs a SeededBatchSampler: its batches carry their seeds")
            return list(zip(images, labels, torch.full((len(rows),), seed)))
        if self.transform is not None:
            images = augment_seeded(self.transform, images, seed)
        return list(zip(images, labels))


def augment_seeded(transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   seed: int | None) -> torch.Tensor:
    """``transform(images)`` with its random draws made from ``seed``, if given, leaving the
    caller's random stream as it was.

    Only the CPU generator is seeded (every transform here draws from it, on any device):
    ``torch.manual_seed`` would also reseed CUDA's, which dropout draws from, and so tie a
    GPU run's dropout to where its batches were augmented.
    """
    if seed is None:
        return transform(images)
    with torch.random.fork_rng(devices=()):
        torch.default_generator.manual_seed(seed)
        return transform(images)


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PCam mean and std on ``device``, made once per device: copying them to a GPU for
    every batch would make the CPU wait for the GPU each step."""
    return (torch.tensor(PCAM_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(PCAM_STD, device=device).view(1, 3, 1, 1))


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) -> normalised float on ``device``, channels_last (faster convs)."""
    mean, std = _normalisation(torch.device(device))
    x = batch.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)
