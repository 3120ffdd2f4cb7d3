"""Training, loading and inference speed of one model (by default the config's), in one run.

Same model, batch size and thread count throughout:
  * training img/s of the library trainer (``train_one_epoch``: sampler, DataLoader,
    augmentation, schedule) vs a bare PyTorch loop over ready tensors (goal: ratio >= 0.95);
  * loading img/s of the cached dataset with the default augmentations, no model, with
    the augmentation where the trainer runs it (goal: >= 20x the training rate);
  * inference img/s, eager and with ``torch.compile`` (goal on 2 CPU cores: >= 250).

    .venv/bin/python bench/throughput.py [--device cuda] [--model NAME] [--batches 30] [--batch-size 64] [--workers N]
        [--augment-on auto|loader|device] [--repeats 3] [--no-compile]
    .venv/bin/python bench/throughput.py --smoke      # seconds: 2 batches, 1 repeat, no compile
On CUDA the trainer uses AMP (bf16 where supported), channels_last, the fused AdamW,
cuDNN autotuning and loader workers, and from batch 128 up augments on the GPU (the
workers then only gather and pin); give it more batches there (``--batches 400``), or
each timed run lasts a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import get_args

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from histo_core.config import SMOKE_WIDTH, ModelName, TrainConfig
from histo_core.data.dataset import PatchDataset, SeededBatchSampler, to_model_input
from histo_core.inference import amp_dtype, pick_device
from histo_core.model import create_model
from histo_core.train import (augments_on_device, batch_on_device, configure_backend, loader_workers, make_optimizer,
                              train_one_epoch, training_augmentation, warmup_cosine)


def _rate(images: int, seconds: float) -> float:
    return images / seconds


def bare_loop(model: nn.Module, batches: list[torch.Tensor], labels: torch.Tensor, device: torch.device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = amp_dtype(device)
    model.train()
    start = time.perf_counter()
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), labels)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _rate(len(batches) * len(labels), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", choices=get_args(ModelName), default=TrainConfig.model_fields["model"].default,
                        help="architecture (default: the config's)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, help="default: the trainer's")
    parser.add_argument("--workers", type=int, help="loader processes (default: the trainer's choice)")
    parser.add_argument("--augment-on", choices=["auto", "loader", "device"], default="auto",
                        help="where batches are augmented (default: the trainer's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each training loop, alternated")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time inference under torch.compile")
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 batches of 16, 1 repeat, no compile, a narrow network")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.batch_size, args.repeats, args.compile = 2, 16, 1, False
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    configure_backend(device)
    cfg = TrainConfig(model=args.model, num_workers=args.workers, augment_on=args.augment_on,
                      **({"batch_size": args.batch_size} if args.batch_size else {}),
                      **({"width": SMOKE_WIDTH} if args.smoke else {}))
    workers = loader_workers(cfg, device)
    bs, n = cfg.batch_size, cfg.batch_size * args.batches
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    augmentation = training_augmentation(cfg)
    dataset = PatchDataset(pixels, labels, np.arange(n), augmentation)
    on_device = augments_on_device(cfg, device)
    augment = augmentation if on_device else None
    # The trainer's loader: seeded batches, persistent workers (started once per run, not per epoch).
    loader = DataLoader(dataset.deferred() if on_device else dataset,
                        batch_sampler=SeededBatchSampler(RandomSampler(dataset), bs, True, torch.Generator()),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def load_all() -> float:
        """Loading alone, augmentation included, wherever the trainer would run it."""
        start = time.perf_counter()
        for images, _labels, *seeds in loader:
            batch_on_device(images, seeds, device, augment)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return _rate(n, time.perf_counter() - start)

    load_all()  # warm-up: starts the workers (the trainer's start once per run) and the GPU's kernels
    loading = float(np.median([load_all() for _ in range(args.repeats)]))

    def fresh_model() -> nn.Module:
        torch.manual_seed(0)
        return create_model(cfg.model, **cfg.model_kwargs()).to(device, memory_format=torch.channels_last)

    # Warm-up (allocator, cuDNN autotune), then the two training loops on the same work.
    warm = [to_model_input(torch.from_numpy(pixels[:bs]).permute(0, 3, 1, 2), device)] * 3
    y = torch.as_tensor(labels[:bs], dtype=torch.float32, device=device)
    bare_loop(fresh_model(), warm, y, device)
    batches = [to_model_input(torch.from_numpy(pixels[i:i + bs]).permute(0, 3, 1, 2), device) for i in range(0, n, bs)]

    def library_loop() -> tuple[nn.Module, float]:
        model = fresh_model()
        optimizer = make_optimizer(model, cfg, device)
        scheduler = warmup_cosine(optimizer, args.batches, 3)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype(device) == torch.float16 else None
        return model, train_one_epoch(model, loader, optimizer, nn.BCEWithLogitsLoss(), device, scheduler,
                                      scaler, augment=augment)[1]

    # Alternate the two loops and compare medians: a shared 2-core VM drifts by +-20% between runs.
    bare_rates, library_rates = [], []
    for _ in range(args.repeats):
        bare_rates.append(bare_loop(fresh_model(), batches, y, device))
        model, rate = library_loop()
        library_rates.append(rate)
    bare, library = float(np.median(bare_rates)), float(np.median(library_rates))

    # Inference, eager and compiled.
    model.eval()
    x = batches[0].repeat(4, 1, 1, 1) if device.type == "cpu" else batches[0].repeat(8, 1, 1, 1)

    @torch.no_grad()
    def infer(m: nn.Module, rounds: int = 5 if device.type == "cpu" else 100) -> float:
        m(x)  # warm-up / compilation
        start = time.perf_counter()
        for _ in range(rounds):
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp_dtype(device) is not None):
                m(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return _rate(rounds * len(x), time.perf_counter() - start)

    eager = infer(model)
    compiled, compiled_note = float("nan"), "(not run: --no-compile)"
    if args.compile:
        compile_start = time.perf_counter()
        try:
            compiled = infer(torch.compile(model))
            compiled_note = f"(compile {time.perf_counter() - compile_start:.0f}s incl. warm-up)"
        except Exception as exc:  # noqa: BLE001 - report, don't hide, a missing compiler toolchain
            compiled_note = f"(torch.compile failed: {type(exc).__name__}: {exc})"

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {device} ({where}); model {cfg.model}; batch {bs}; precision {amp_dtype(device) or 'fp32'}; "
          f"{workers} loader workers; augmenting on the {'device' if on_device else 'loader'}")

    def spread(rates: list[float]) -> str:
        return f"(median of {', '.join(f'{r:.0f}' for r in rates)})"

    print(f"training, bare PyTorch loop:   {bare:9.1f} img/s   {spread(bare_rates)}")
    print(f"training, library trainer:     {library:9.1f} img/s   {spread(library_rates)}  "
          f"ratio {library / bare:.3f}  [goal >= 0.95]")
    print(f"loading + augmentation:        {loading:9.1f} img/s   {loading / library:.1f}x training  [goal >= 20x]")
    print(f"inference, eager:              {eager:9.1f} img/s   [goal >= 250 on 2 CPU cores]")
    print(f"inference, torch.compile:      {compiled:9.1f} img/s   {compiled_note}")


if __name__ == "__main__":
    main()
