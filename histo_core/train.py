"""The trainer: BCEWithLogits + Adam with class-balanced sampling, best-val-loss checkpoints.

Read top to bottom: ``fit`` sets up, then alternates ``train_one_epoch`` and
``evaluate_loss_auc`` and writes ``history.json``, ``best.pt`` (whenever the val loss
improves) and ``last.pt`` (every epoch, with optimizer and RNG state, so a retried run
resumes where it stopped instead of starting over). With ``ema_epochs`` the weights that
are validated and saved are a moving average of the trained ones (``weight_average``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, WeightedRandomSampler
from torchvision.ops import sigmoid_focal_loss

from histo_core.atomic import atomic_write
from histo_core.checkpoint import TrainingState, model_record, read_checkpoint, write_checkpoint
from histo_core.config import TrainConfig
from histo_core.data.dataset import (PatchDataset, SeededBatchSampler, augment_seeded, build_augmentation,
                                    to_model_input)
from histo_core.distributed import (Context, DistributedWeightedSampler, all_sum, barrier, gather_by_index,
                                    init_from_env)
from histo_core.inference import amp_dtype, pick_device, score_labelled
from histo_core.model import create_model
from histo_core.split import balanced_weights

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, float]], None]
BatchCallback = Callable[[int, int, int], None]  # (epoch, batches done, batches in the epoch)


@dataclass(frozen=True)
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    device: str


def build_model(cfg: TrainConfig) -> nn.Module:
    return create_model(cfg.model, **cfg.model_kwargs())


def training_augmentation(cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation ``cfg`` asks for, or None when it asks for none."""
    if not cfg.augment:
        return None
    return build_augmentation(cfg.color_jitter, cfg.hue_jitter, cfg.hed_jitter, cfg.stain_vector_jitter,
                              cfg.blur_sigma, cfg.scale_jitter)


def training_loss(label_smoothing: float = 0.0,
                  focal_gamma: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Binary cross-entropy on logits, towards labels ``label_smoothing / 2`` and
    ``1 - label_smoothing / 2``: a model then gains nothing from ever more confident logits
    on patches it already ranks right. With ``focal_gamma`` each image's loss is weighted
    by ``(1 - p_t) ** focal_gamma`` (torchvision's focal loss, no class weight: the sampler
    balances the classes). Only training uses it; the val loss that picks the checkpoint
    stays the plain one, comparable across settings."""
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else labels
        if focal_gamma:
            return sigmoid_focal_loss(logits, targets, alpha=-1, gamma=focal_gamma, reduction="mean")
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return loss


def configure_backend(device: torch.device, num_threads: int | None = None, deterministic: bool = False) -> None:
    """Per-device settings. A CPU gets ``num_threads`` intra-op threads. On CUDA, cuDNN
    times its convolution algorithms once per input shape and keeps the fastest (every
    batch here has the same shape, so the timing pays back in the first epoch); the
    fastest are not always deterministic, so two runs, or a run and its resumption,
    drift apart. ``deterministic`` trades that speed for bit-identical runs."""
    if device.type == "cpu" and num_threads:
        torch.set_num_threads(num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def weight_average(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics over
    about ``cfg.ema_epochs`` epochs, updated after every optimizer step; None when off.

    Why in epochs, not a per-step decay: the same setting then averages over the same
    share of training on a 4,000-patch batch and on 260,000 patches."""
    if cfg.ema_epochs == 0:
        return None
    decay = 1 - 1 / max(1.0, cfg.ema_epochs * steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; on CUDA the fused kernel, one launch for all parameters instead of several each."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=device.type == "cuda")


def augments_on_device(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training batches are augmented on ``device`` rather than in the loader.

    By default on a CUDA GPU from batch 128 up. Measured on an H200 with 16 cores
    (bench/throughput.py): at batch 256 augmenting on the GPU trained at 36,400 img/s,
    against ~19,000 when 8 loader workers augmented on their CPUs. At batch 64 the
    loader won, 13,200 to 9,700: the training process is already busy issuing kernels
    for the small steps, and augmenting adds ~50 more per batch. 128 lies between the
    two measured sizes and was not measured.
    """
    if cfg.augment_on != "auto":
        return cfg.augment_on == "device"
    return device.type == "cuda" and cfg.batch_size >= 128


def batch_on_device(images: torch.Tensor, seeds: list[torch.Tensor], device: torch.device,
                    augment: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """A loader's uint8 batch on ``device``; with ``augment``, augmented there from the seed
    that a ``PatchDataset.deferred()`` batch carries."""
    images = images.to(device, non_blocking=True)
    return images if augment is None else augment_seeded(augment, images, int(seeds[0][0]))


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    scaler: torch.amp.GradScaler | None = None,
                    on_batch: Callable[[int, int], None] | None = None,
                    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    average: AveragedModel | None = None) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, images per second).

    ``augment``, if given, augments each batch on ``device``; the loader then serves a
    ``PatchDataset.deferred()`` and each batch carries its seed. ``on_batch(done, total)``
    is called after each step with batch counts only, so a progress bar never forces a
    GPU sync. ``average``, if given, is updated after each step.
    """
    model.train()
    dtype = amp_dtype(device)
    total, seen, start = torch.zeros((), device=device), 0, time.perf_counter()
    for step, (images, labels, *seeds) in enumerate(loader, start=1):
        x = to_model_input(batch_on_device(images, seeds, device, augment), device)
        y = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update_parameters(model)
        total += loss.detach() * len(y)  # no .item(): a GPU would wait for every batch
        seen += len(y)
        if on_batch is not None:
            on_batch(step, len(loader))
    return float(total) / max(1, seen), seen / (time.perf_counter() - start)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 1% of the base rate, stepped per batch."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate_loss_auc(model: nn.Module, loader: DataLoader, device: torch.device,
                      ctx: Context = Context()) -> tuple[float, float, int]:
    """Val loss, val AUC and the number of val images, over the whole val set on every rank."""
    logits, labels = score_labelled(model, loader, device)
    if ctx.active:
        shard = np.fromiter(iter(loader.sampler), dtype=np.int64)
        logits, labels = gather_by_index(shard, logits, labels, ctx=ctx)
    loss = nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    auc = roc_auc_score(labels, logits) if len(set(labels.tolist())) == 2 else math.nan
    return float(loss), float(auc), len(labels)


def loader_workers(cfg: TrainConfig, device: torch.device, processes: int = 1) -> int:
    """``cfg.num_workers``, or when unset: 0 on a CPU (the model needs its cores; loading
    in the main process costs ~2% there), else up to 8 per process with a core to spare,
    so a GPU is not kept waiting on augmentation."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // processes - 1))


def _loaders(train_set: PatchDataset, val_set: PatchDataset, cfg: TrainConfig, device: torch.device,
             sampler_gen: torch.Generator, ctx: Context) -> tuple[DataLoader, DataLoader]:
    weights = balanced_weights(train_set.labels[train_set.indices])
    if ctx.active:
        sampler: Sampler[int] = DistributedWeightedSampler(weights, ctx, cfg.seed)
        val_sampler: Sampler[int] | None = DistributedSampler(val_set, ctx.world, ctx.rank, shuffle=False)
    else:
        sampler = WeightedRandomSampler(torch.as_tensor(weights), len(weights), replacement=True,
                                        generator=sampler_gen)
        val_sampler = None
    # The loaders' own generator takes their per-iterator seed draws off the global RNG, which
    # dropout uses: persistent workers draw once per run, a main-process loader once per epoch.
    workers = loader_workers(cfg, device, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world)))
    common = {"num_workers": workers, "pin_memory": device.type == "cuda",
              "persistent_workers": workers > 0, "generator": torch.Generator().manual_seed(cfg.seed)}
    batches = SeededBatchSampler(sampler, cfg.batch_size, len(sampler) > cfg.batch_size, sampler_gen)
    train_loader = DataLoader(train_set, batch_sampler=batches, **common)
    return train_loader, DataLoader(val_set, cfg.batch_size * 2, sampler=val_sampler, **common)


def fit(train_set: PatchDataset, val_set: PatchDataset, cfg: TrainConfig, out_dir: Path | str,
        on_epoch: EpochCallback | None = None, on_batch: BatchCallback | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``train_set``; checkpoints and history go to ``out_dir``.

    ``on_epoch`` receives each epoch's record (rank 0 only); ``on_batch(epoch, done,
    total)`` reports progress inside an epoch, for a command-line progress bar.

    Saves ``best.pt`` whenever the val loss improves; with a ``cfg.patience``, stops early
    after that many epochs without a better one (by default it trains the whole schedule,
    see ``TrainConfig.patience``), but never before ``cfg.early_stopping_from``: at a high
    learning rate the val loss jumps about (with the defaults of the time on the shared real
    patches, patience alone stopped at epoch 12 of 30 at test AUC 0.94, where the full
    schedule reached 0.97). From that epoch on the best is chosen afresh, among the epochs of
    the decayed learning rate only: a lucky dip of the val loss at a high learning rate
    otherwise stays the best (on the 19k shared patches, epoch 20 of 45 was, early
    stopping ended the run at 30 and the test AUC was 0.005 below the 30-epoch schedule's;
    docs/benchmarks.md). If ``out_dir`` holds a ``last.pt`` written with the same config
    (up to a patience under which it would not have stopped sooner), training resumes
    after its epoch and ends where an uninterrupted run would have.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    ctx = init_from_env(device.type)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    configure_backend(device, cfg.num_threads, cfg.deterministic)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    sampler_gen = torch.Generator().manual_seed(cfg.seed)
    augment = train_set.transform if augments_on_device(cfg, device) else None
    if augment is not None:
        train_set = train_set.deferred()
    train_loader, val_loader = _loaders(train_set, val_set, cfg, device, sampler_gen, ctx)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps=min(len(train_loader), total_steps // 10 + 1))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(device) == torch.float16 else None
    loss_fn = training_loss(cfg.label_smoothing, cfg.focal_gamma)
    average = weight_average(model, cfg, len(train_loader))

    history: list[dict[str, float]] = []
    best_loss, start_epoch = math.inf, 0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists():
        # on the CPU: RNG states must stay CPU tensors; the model and optimizer copy theirs over
        state = read_checkpoint(last_path, map_location="cpu")
        resume = _resumable(state, cfg, last_path)
        if resume is not None:
            model.load_state_dict(state["model"] if average is None else resume.trained_model)
            if average is not None:
                average.module.load_state_dict(state["model"])
                average.n_averaged.fill_(resume.averaged_steps)
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            if scaler is not None and resume.scaler:
                scaler.load_state_dict(resume.scaler)
            sampler_gen.set_state(resume.sampler_rng)
            torch.set_rng_state(resume.torch_rng)
            if device.type == "cuda" and resume.cuda_rng is not None:  # dropout draws from it there
                torch.cuda.set_rng_state(resume.cuda_rng, device)
            history, best_loss, start_epoch = resume.history, resume.best_val_loss, resume.epoch
            log.info("resuming from %s after epoch %d", last_path, start_epoch)

    if ctx.active:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log.info("training %s on %s (%s, %d process%s, augmenting on the %s): %d train / %d val images, %d epochs%s",
             cfg.model, device, amp_dtype(device) or "fp32", ctx.world, "es" if ctx.active else "",
             "device" if augment else "loader", len(train_set), len(val_set), cfg.epochs,
             "" if cfg.patience is None else f" at most (early stopping after {cfg.patience} epochs without a better "
                                             f"val loss, counted from epoch {cfg.early_stopping_from + 1})")
    batches = train_loader.batch_sampler
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if _stops_after(history, cfg):
            log.info("early stop: val loss has not improved for %d epochs", cfg.patience)
            break
        if epoch == cfg.early_stopping_from + 1:
            best_loss = math.inf  # the checkpoint is chosen among the decayed epochs (docstring)
        epoch_started = time.perf_counter()
        if isinstance(batches.sampler, DistributedWeightedSampler):
            batches.sampler.set_epoch(epoch)
        batch_progress = partial(on_batch, epoch) if on_batch and ctx.is_main else None
        train_loss, images_per_s = train_one_epoch(model, train_loader, optimizer, loss_fn, device,
                                                   scheduler, scaler, batch_progress, augment, average)
        seen = len(train_loader) * cfg.batch_size if batches.drop_last else len(batches.sampler)
        train_loss = all_sum(train_loss * seen, ctx) / all_sum(seen, ctx)  # same value on every rank
        scored = model if average is None else average.module
        val_loss, val_auc, val_images = evaluate_loss_auc(scored, val_loader, device, ctx)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": all_sum(images_per_s, ctx),
                  "val_images": val_images, "improved": val_loss < best_loss,
                  "seconds": time.perf_counter() - epoch_started}
        history.append(record)
        improved, best_loss = val_loss < best_loss, min(best_loss, val_loss)
        if ctx.is_main:  # one writer; every rank holds the same history and decisions
            weights = model_record(scored, cfg)
            if improved:
                write_checkpoint(best_path, weights, epoch=epoch, val_loss=val_loss, val_auc=val_auc)
            write_checkpoint(last_path, weights, TrainingState(
                epoch=epoch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler else None, history=history, best_val_loss=best_loss,
                sampler_rng=sampler_gen.get_state(), torch_rng=torch.get_rng_state(),
                cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None, world=ctx.world,
                trained_model=None if average is None else model_record(model, cfg)["model"],
                averaged_steps=0 if average is None else int(average.n_averaged)))
            atomic_write(out_dir / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=2)))
            if on_epoch:
                on_epoch(record)
        barrier(ctx)
    return TrainResult(best_path, last_path, history, str(device))


# Settings whose default is not what the versions before them did: a checkpoint written
# before the setting existed trained this way.
_BEFORE_THE_SETTING = {"label_smoothing": 0.0}  # added off (9968e8f); 0.1 by default since


def _resumable(state: dict[str, Any], cfg: TrainConfig, path: Path) -> TrainingState | None:
    """What to resume from the checkpoint ``state`` read from ``path``; None, with the
    reason logged, when a run with ``cfg`` cannot continue it."""
    if not _same_run(state["config"], cfg):
        log.warning("ignoring %s: it was written with a different config", path)
        return None
    resume = TrainingState.from_checkpoint(state, path)
    if _stopped_sooner(resume.history, cfg):
        log.warning("ignoring %s: with patience %s this run would have stopped before its epoch %d",
                    path, cfg.patience, resume.epoch)
        return None
    return resume


def _same_run(saved: dict[str, object], cfg: TrainConfig) -> bool:
    """Whether a checkpoint's config is ``cfg``'s, up to the loader worker count, which
    does not change results (augmentation is seeded per batch): a retry on a machine
    with more cores still resumes. A setting the checkpoint's version did not have yet
    counts as what that version did (its default, unless ``_BEFORE_THE_SETTING`` says
    otherwise): a run killed before an upgrade resumes after it, if it trained as the
    upgraded config would. ``patience`` only decides when to stop, so it is left to
    ``_stopped_sooner``: a run stopped early goes on when given more patience."""
    before = {**TrainConfig().model_dump(), **_BEFORE_THE_SETTING}
    ignored = {"num_workers": None, "patience": None}
    return {**before, **saved, **ignored} == {**cfg.model_dump(), **ignored}


def _stops_after(history: list[dict[str, float]], cfg: TrainConfig) -> bool:
    """Whether early stopping ends the run after the epochs in ``history``: never before
    ``cfg.early_stopping_from``, never without a ``cfg.patience``."""
    start = cfg.early_stopping_from
    return cfg.patience is not None and len(history) > start and _stale_epochs(history[start:]) >= cfg.patience


def _stopped_sooner(history: list[dict[str, float]], cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s patience would have ended a run before the last epoch it trained:
    resuming it then would not end where an uninterrupted run with ``cfg`` would have."""
    return any(_stops_after(history[:done], cfg) for done in range(len(history)))


def _stale_epochs(history: list[dict[str, float]]) -> int:
    """Epochs since the val loss last improved."""
    improved = [i for i, r in enumerate(history) if r["improved"]]
    return len(history) - 1 - improved[-1] if improved else len(history)


def format_epoch(record: dict[str, float], epochs: int) -> str:
    """One epoch's line, as every progress log and bench prints it."""
    return (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val AUC {record['val_auc']:.4f}  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.0f} img/s" + ("  (best, saved)" if record["improved"] else ""))
