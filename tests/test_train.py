import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from histo_core.config import SMOKE_WIDTH, TrainConfig
from histo_core.data.dataset import (PatchDataset, RandomDihedral, build_augmentation, dihedral_each,
                                     dihedral_gathered)
from histo_core.steps import load_partitions
from histo_core.inference import load_model, score_dataset
from histo_core.layout import SplitDir
from histo_core.train import fit

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def parts(kaggle_split, tmp_path_factory):
    return load_partitions(kaggle_split, tmp_path_factory.mktemp("cache"), build_augmentation())


TRAIN = 96  # training images in tests of what the trainer does: 3 batches of 32


def _first(dataset: PatchDataset, count: int = TRAIN) -> PatchDataset:
    """The first ``count`` patches of ``dataset``: for tests of what the trainer decides,
    not of what it learns."""
    return PatchDataset(dataset.pixels, dataset.labels, dataset.indices[:count], dataset.transform)


def test_random_dihedral_reaches_all_8_views_and_only_moves_pixels():
    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(1, 3, 4, 4)
    seen = {tuple(RandomDihedral()(image).flatten().tolist()) for _ in range(60)}
    assert len(seen) == 8
    assert all(sorted(v) == sorted(image.flatten().tolist()) for v in seen)


def test_gathered_dihedral_views_are_the_looped_ones():
    """The GPU's way (all views, then pick) must give what the CPU's loop gives, per image."""
    batch = torch.randint(0, 256, (16, 3, 5, 5), dtype=torch.uint8)
    k, flip = torch.arange(16) % 4, torch.arange(16) // 4  # every (turns, flip) pair, odd and even flips
    looped = dihedral_each(batch, k, flip)
    assert torch.equal(dihedral_gathered(batch, k, flip), looped)
    assert torch.equal(looped[5], batch[5].rot90(1, (1, 2)).flip(2))  # k=1, flip=1: turn, then mirror
    assert len({tuple(v.flatten().tolist()) for v in dihedral_each(batch[:1].expand(8, -1, -1, -1),
                                                                      k[:8], flip[:8])}) == 8


def test_fit_writes_checkpoints_history_and_keeps_the_best(parts, tmp_path):
    """The default architecture, as a retrain trains it; the trainer's other tests run the
    same code on a narrower network (SMOKE_WIDTH)."""
    # min_epochs 3: the best of all three epochs (the choice afresh after min_epochs is
    # test_the_checkpoint_is_chosen_afresh_once_early_stopping_may_act's)
    cfg = TrainConfig(epochs=3, batch_size=32, seed=1, min_epochs=3)
    result = fit(_first(parts["train"]), parts["val"], cfg, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3] == [r["epoch"] for r in result.history]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_auc"] <= 1 for r in history)
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"]
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["epoch"] == best_epoch
    assert best["val_loss"] == pytest.approx(min(r["val_loss"] for r in history))
    assert [r["improved"] for r in history][0] is True
    assert torch.load(result.last_checkpoint, weights_only=True)["epoch"] == 3
    model = load_model(result.best_checkpoint)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 96, 96)).shape == (2,)


def test_the_weight_average_spans_ema_epochs_of_steps():
    from histo_core.train import weight_average

    model = torch.nn.Linear(1, 1, bias=False)
    average = weight_average(model, TrainConfig(ema_epochs=2), steps_per_epoch=10)  # decay 1 - 1/20
    assert weight_average(model, TrainConfig(), steps_per_epoch=10) is None
    with torch.no_grad():
        model.weight.fill_(0)
        average.update_parameters(model)  # the first update copies
        model.weight.fill_(1)
        for _ in range(20):
            average.update_parameters(model)
    assert average.module.weight.item() == pytest.approx(1 - (1 - 1 / 20) ** 20)  # 64%, not 100%


def test_with_a_weight_average_the_validated_and_saved_weights_are_the_average(parts, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, seed=1, ema_epochs=3, width=SMOKE_WIDTH)
    result = fit(_first(parts["train"]), parts["val"], cfg, tmp_path)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert any(not torch.equal(last["model"][k], last["trained_model"][k]) for k in last["model"])
    logits, labels = score_dataset(load_model(result.last_checkpoint), parts["val"], torch.device("cpu"))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    assert float(loss) == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def _train_then_die_after_epoch_1(split: str, cache: str, out: str, cfg_json: str) -> None:
    """Runs in a separate process, which kills itself (SIGKILL, no clean-up) after epoch 1."""
    def die(record):
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    parts = load_partitions(SplitDir(Path(split)), Path(cache), build_augmentation())
    fit(_first(parts["train"]), parts["val"], TrainConfig.model_validate_json(cfg_json), out, on_epoch=die)


@pytest.mark.parametrize("device, workers, ema_epochs",
                         [("cpu", 0, 0), ("cpu", 2, 0.5), pytest.param("cuda", 2, 0.5, marks=CUDA)])
def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_would(kaggle_split, tmp_path, device, workers,
                                                                        ema_epochs):
    """With ``ema_epochs`` the average (and how many steps it holds) must resume as well as
    the trained weights."""
    split = kaggle_split
    # On CUDA two runs agree only with deterministic convolutions: two from-scratch runs
    # with cuDNN's timed choices already differed by 18% in val loss after one epoch.
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, num_workers=0, device=device, deterministic=device == "cuda",
                      ema_epochs=ema_epochs, width=SMOKE_WIDTH)
    cache = tmp_path / "cache"
    parts = load_partitions(split, cache, build_augmentation())  # its random draws must resume too
    uninterrupted = fit(_first(parts["train"]), parts["val"], cfg, tmp_path / "a")

    worker = multiprocessing.get_context("spawn").Process(
        target=_train_then_die_after_epoch_1, args=(str(split.root), str(cache), str(tmp_path / "b"),
                                                    cfg.model_dump_json()))
    worker.start()
    worker.join(300)
    assert worker.exitcode == -signal.SIGKILL
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1

    # resumed with new loader workers: neither they nor their count may change the result
    trained: list[int] = []
    resumed = fit(_first(parts["train"]), parts["val"], cfg.model_copy(update={"num_workers": workers}), tmp_path / "b",
                  on_epoch=lambda record: trained.append(record["epoch"]))
    assert trained == [2], "resumed after epoch 1, not started over"
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(uninterrupted.history, resumed.history):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["lr"] == pytest.approx(a["lr"])
    final_a, final_b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in "ab")
    weights = ["model", "trained_model"] if ema_epochs else ["model"]
    assert all(torch.allclose(final_a[w][k].float(), final_b[w][k].float(), atol=1e-5)
               for w in weights for k in final_a[w])
    assert final_b["averaged_steps"] == final_a["averaged_steps"] == (2 * TRAIN // 32 if ema_epochs else 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_augmenting_on_the_device_trains_exactly_as_augmenting_in_the_loader(parts, tmp_path, workers):
    """On a CPU both places run the same ops on the same draws, so the runs must be identical."""
    cfg = TrainConfig(epochs=2, batch_size=32, seed=5, num_workers=workers, width=SMOKE_WIDTH)
    runs = {where: fit(_first(parts["train"]), parts["val"], cfg.model_copy(update={"augment_on": where}), tmp_path / where)
            for where in ("loader", "device")}
    assert [r["val_loss"] for r in runs["loader"].history] == [r["val_loss"] for r in runs["device"].history]
    weights = [torch.load(r.last_checkpoint, weights_only=True)["model"] for r in runs.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@CUDA
def test_augmenting_on_a_gpu_draws_and_changes_what_the_cpu_does():
    """Same seed, same views and stain draws; the float maths may round one grey level apart."""
    from histo_core.data.dataset import augment_seeded

    batch = torch.randint(0, 256, (64, 3, 96, 96), dtype=torch.uint8)
    augment = build_augmentation(stain_vector_jitter=0.2)
    on_cpu = augment_seeded(augment, batch, seed=11)
    on_gpu = augment_seeded(augment, batch.cuda(), seed=11).cpu()
    assert on_gpu.dtype == torch.uint8 and not torch.equal(on_cpu, batch)
    assert (on_cpu.int() - on_gpu.int()).abs().max() <= 1


def test_a_deferred_dataset_serves_unaugmented_images_with_their_batch_seed(parts):
    from histo_core.data.dataset import SeededBatch

    train = parts["train"]
    deferred = train.deferred()
    items = deferred.__getitems__(SeededBatch([0, 1, 2], seed=42))
    plain = PatchDataset(train.pixels, train.labels, train.indices).__getitems__([0, 1, 2])
    assert all(torch.equal(d[0], p[0]) and d[1] == p[1] and int(d[2]) == 42 for d, p in zip(items, plain))
    assert train.transform is not None and not train.is_deferred, "the original is left as it was"
    with pytest.raises(ValueError, match="SeededBatchSampler"):
        deferred.__getitems__([0, 1])


def test_training_stops_early_when_val_loss_stops_improving(parts, tmp_path, monkeypatch):
    from histo_core import train as trainer

    history = [{"improved": i == 0} for i in range(3)]
    assert trainer._stale_epochs(history) == 2 and trainer._stale_epochs([]) == 0
    # A val loss that never improves cannot be produced on demand by real training, so
    # the evaluation is pinned to a constant: epoch 1 improves on infinity, 2 and 3 don't.
    monkeypatch.setattr(trainer, "evaluate_loss_auc", lambda *a, **k: (0.5, 0.5, len(parts["val"])))
    small = _first(parts["train"], 64)  # what is counted is epochs, not what they learn
    # After min_epochs (1) the best is chosen afresh: epoch 2 is the first, 3 and 4 don't improve.
    result = fit(small, parts["val"], TrainConfig(epochs=6, patience=2, min_epochs=1, batch_size=32, width=SMOKE_WIDTH), tmp_path)
    assert [r["improved"] for r in result.history] == [True, True, False, False]
    # ... and never before min_epochs, however long the val loss has been flat
    later = fit(small, parts["val"], TrainConfig(epochs=9, patience=2, min_epochs=4, batch_size=32, width=SMOKE_WIDTH),
                tmp_path / "later")
    assert [r["improved"] for r in later.history] == [True, False, False, False, True, False, False]
    # unset, it is two thirds of the schedule, whatever its length: 8 of 12 here, 30 of the default 45
    assert TrainConfig().early_stopping_from == 30 and TrainConfig(epochs=90).early_stopping_from == 60
    thirds = fit(small, parts["val"], TrainConfig(epochs=12, patience=2, batch_size=32, width=SMOKE_WIDTH),
                 tmp_path / "thirds")
    assert len(thirds.history) == 8 + 1 + 2
    # without a patience (the default) the whole schedule runs, however flat the val loss
    assert TrainConfig().patience is None
    whole = fit(small, parts["val"], TrainConfig(epochs=5, min_epochs=1, batch_size=32, width=SMOKE_WIDTH),
                tmp_path / "whole")
    assert [r["epoch"] for r in whole.history] == [1, 2, 3, 4, 5]


def test_a_run_stopped_early_goes_on_with_more_patience_and_starts_over_with_less(parts, tmp_path, monkeypatch):
    """Patience only decides when to stop, so a stopped run resumed with more patience (or
    none) trains on from its last epoch; with less, it would have stopped sooner than it
    did, and resuming could not end where an uninterrupted run would: it starts over."""
    import shutil

    from histo_core import train as trainer

    # a flat val loss, as in the early-stop test: epoch 1 improves on infinity, epoch 2 is
    # the first after min_epochs, then nothing improves
    monkeypatch.setattr(trainer, "evaluate_loss_auc", lambda *a, **k: (0.5, 0.5, len(parts["val"])))
    small = _first(parts["train"], 64)
    cfg = TrainConfig(epochs=6, patience=2, min_epochs=1, batch_size=32, width=SMOKE_WIDTH)
    stopped = fit(small, parts["val"], cfg, tmp_path / "a")
    assert [r["epoch"] for r in stopped.history] == [1, 2, 3, 4]
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    trained: list[int] = []
    on = fit(small, parts["val"], cfg.model_copy(update={"patience": None}), tmp_path / "a",
             on_epoch=lambda record: trained.append(record["epoch"]))
    assert trained == [5, 6] and [r["epoch"] for r in on.history] == [1, 2, 3, 4, 5, 6]

    trained.clear()  # patience 1 would have stopped it after epoch 3, not 4
    over = fit(small, parts["val"], cfg.model_copy(update={"patience": 1}), tmp_path / "b",
               on_epoch=lambda record: trained.append(record["epoch"]))
    assert trained == [1, 2, 3] and [r["epoch"] for r in over.history] == [1, 2, 3]


def test_the_checkpoint_is_chosen_afresh_once_early_stopping_may_act(parts, tmp_path, monkeypatch):
    """A dip of the val loss while the learning rate is high (epoch 2 here) is not kept as
    the best: from min_epochs on, best.pt is the best of the later epochs."""
    from histo_core import steps, train as trainer

    losses = iter([0.5, 0.2, 0.4, 0.3, 0.35, 0.36, 0.37])
    # A val loss sequence like this cannot be produced on demand by real training.
    monkeypatch.setattr(trainer, "evaluate_loss_auc", lambda *a, **k: (next(losses), 0.5, len(parts["val"])))
    result = fit(_first(parts["train"], 64), parts["val"],
                 TrainConfig(epochs=7, patience=2, min_epochs=2, batch_size=32, width=SMOKE_WIDTH), tmp_path)
    assert [r["improved"] for r in result.history] == [True, True, True, True, False, False]
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert (best["epoch"], best["val_loss"]) == (4, 0.3)
    assert steps.best_epoch(result.history)["epoch"] == 4


def test_checkpoint_from_another_config_is_not_resumed(parts, tmp_path):
    small = _first(parts["train"], 64)
    fit(small, parts["val"], TrainConfig(epochs=1, batch_size=32, width=SMOKE_WIDTH), tmp_path)
    result = fit(small, parts["val"], TrainConfig(epochs=1, batch_size=32, lr=5e-4, width=SMOKE_WIDTH), tmp_path)
    assert [r["epoch"] for r in result.history] == [1]


def test_a_checkpoint_from_before_a_setting_existed_resumes_when_it_trained_as_the_config_would():
    """An upgrade that adds a training setting must not make a killed run start over when
    the old version trained as the new config does, and must when it did not (a default
    that changed)."""
    from histo_core.train import _same_run

    cfg = TrainConfig(epochs=3)
    older = {k: v for k, v in cfg.model_dump().items()
             if k not in ("blur_sigma", "label_smoothing", "focal_gamma", "scale_jitter")}
    # label smoothing was added off and is on by default now: the older run trained without it
    assert cfg.label_smoothing > 0 and not _same_run(older, cfg)
    unsmoothed = cfg.model_copy(update={"label_smoothing": 0.0})
    assert _same_run(older, unsmoothed)
    assert not _same_run(older, unsmoothed.model_copy(update={"blur_sigma": 0.5}))
    assert not _same_run(older, unsmoothed.model_copy(update={"scale_jitter": 0.1}))
    assert not _same_run({**older, "lr": 5e-4}, unsmoothed)
    assert _same_run(cfg.model_dump(), cfg)
    # patience is left to the history (see the test above): a checkpoint from before None was the default resumes
    assert _same_run({**cfg.model_dump(), "patience": 6}, cfg)


def test_dataset_items_are_uint8_chw_with_float_labels(parts):
    image, label = parts["val"][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 96)
    assert label.dtype == torch.float32 and label.item() in (0.0, 1.0)
    assert isinstance(parts["val"], PatchDataset) and parts["val"].transform is None
    assert parts["train"].transform is not None


def test_batched_reads_match_single_reads(parts):
    val = parts["val"]
    batch = val.__getitems__([2, 0, 1])
    for item, (image, label) in zip([2, 0, 1], batch):
        row = val.indices[item]  # straight from the cache, not through the dataset's own read
        assert torch.equal(image, torch.from_numpy(np.array(val.pixels[row])).permute(2, 0, 1))
        assert label == float(val.labels[row]) and torch.equal(val[item][0], image)


def test_augmentation_keeps_shape_and_type_and_draws_per_image():
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    batch = image.expand(8, -1, -1, -1)
    out = build_augmentation(0.3)(batch)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    symmetries = [torch.rot90(im, k, dims=(1, 2)) for im in (image, image.flip(2)) for k in range(4)]
    assert not any(torch.equal(o, s) for o in out for s in symmetries), "colour jitter should change pixel values"
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8, "each image gets its own draw"
    plain = build_augmentation(0.0, hed_jitter=0.0, stain_vector_jitter=0.0)(batch)
    assert all(sorted(o.flatten().tolist()) == sorted(image.flatten().tolist()) for o in plain)


def test_hue_jitter_draws_per_image_and_keeps_each_pixels_value():
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    out = build_augmentation(0.0, hue_jitter=0.3, hed_jitter=0.0, stain_vector_jitter=0.0)(image.expand(8, -1, -1, -1))
    assert out.shape == (8, 3, 96, 96) and out.dtype == torch.uint8
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8, "each image gets its own hue"
    value = image.amax(0).flatten().sort().values.int()  # HSV value, which a hue turn keeps; flips only move it
    assert all((o.amax(0).flatten().sort().values.int() - value).abs().max() <= 1 for o in out)


def test_colour_jitter_is_the_identity_at_zero_and_moves_stain_colours_otherwise():
    from histo_core.data.dataset import RandomColourJitter

    batch = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8)
    assert torch.equal(RandomColourJitter(0.0, 0.0)(batch), batch)
    torch.manual_seed(0)
    for jitter in (RandomColourJitter(hed=0.2), RandomColourJitter(hed=0.0, bcs=0.3)):
        shifted = jitter(batch)
        assert shifted.dtype == torch.uint8 and shifted.shape == batch.shape
        assert ((shifted.float() - batch.float()).abs().mean((1, 2, 3)) > 2).all()


def test_shift_colours_recolours_stain_amounts_with_other_stain_vectors():
    """Against a direct computation: amounts by Ruifrok-Johnston's matrix, colour by another one."""
    from histo_core.data.dataset import RGB_FROM_HED, shift_colours

    image = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8)
    standard = np.array(RGB_FROM_HED)
    other = standard.copy()
    other[0] = [0.55, 0.80, 0.25]  # a redder haematoxylin
    other[0] /= np.linalg.norm(other[0])
    od = -np.log((image[0].permute(1, 2, 0).numpy().astype(np.float64) + 1) / 256)
    expected = np.clip(np.exp(-(od @ np.linalg.inv(standard) @ other)) * 256 - 1, 0, 255)
    ours = shift_colours(image, torch.ones(1, 3), torch.zeros(1, 3), torch.ones(1, 3),
                         stain_vectors=torch.tensor(other, dtype=torch.float32)[None])
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - expected).max() <= 0.5 + 1e-2
    assert (ours.float() - image.float()).abs().mean() > 1, "another haematoxylin colour must show"


def test_stain_vector_jitter_turns_stain_colours_per_image_and_leaves_background_white():
    from histo_core.data.dataset import RGB_FROM_HED, RandomColourJitter, turned_stain_vectors

    vectors = turned_stain_vectors(torch.rand(16, 2, 3) * 0.6 - 0.3)
    assert torch.allclose(vectors.norm(dim=2)[:, :2], torch.ones(16, 2)) and (vectors >= 0).all()
    assert (vectors[:, 2] == torch.tensor(RGB_FROM_HED[2])).all(), "DAB, absent from H&E, stays as it is"
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    image[:, :8] = 255  # background: no stain of any colour
    torch.manual_seed(0)
    out = RandomColourJitter(hed=0.0, bcs=0.0, vectors=0.2)(image.expand(8, -1, -1, -1))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8, "each image gets its own stain colours"
    assert (out[:, :, :8] == 255).all()
    assert ((out.float() - image.float()).abs().mean((1, 2, 3)) > 1).all()


def _torchvision_colour(image: torch.Tensor, steps: list[tuple[str, float]]) -> torch.Tensor:
    """torchvision's float adjust_* functions in the given order, in [0, 255]."""
    from torchvision.transforms.v2 import functional

    out = image.float() / 255
    for name, factor in steps:
        out = getattr(functional, f"adjust_{name}")(out, factor)
    return out * 255


@pytest.mark.parametrize("op, name", [(0, "brightness"), (1, "contrast"), (2, "saturation")])
def test_brightness_contrast_saturation_match_torchvision(op, name):
    from histo_core.data.dataset import shift_colours

    image = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8)
    for factor in (0.7, 1.0, 1.3):
        bcs = torch.ones(1, 3)
        bcs[0, op] = factor
        ours = shift_colours(image, torch.ones(1, 3), torch.zeros(1, 3), bcs)
        assert (ours.float() - _torchvision_colour(image[0], [(name, factor)])).abs().max() <= 0.5 + 1e-3


def test_brightness_contrast_saturation_combine_in_any_order_when_nothing_clips():
    from histo_core.data.dataset import shift_colours

    image = torch.randint(90, 160, (1, 3, 96, 96), dtype=torch.uint8)
    factors = {"brightness": 1.1, "contrast": 0.9, "saturation": 1.15}
    ours = shift_colours(image, torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([list(factors.values())]))
    for order in (list(factors.items()), list(factors.items())[::-1]):
        assert (ours.float() - _torchvision_colour(image[0], order)).abs().max() <= 0.5 + 1e-2


def test_two_process_ddp_on_cpu_trains_on_all_data_and_only_rank_0_writes(kaggle_root, tmp_path, capfd):
    """``histo train --nproc 2`` called here (the ranks are torchrun's processes, writing
    to this process's stdout): a process of its own for the command would add only its
    imports."""
    import tempfile

    from histo_cli.main import main

    def torchrun_leftovers() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("torchelastic_*"))

    before = torchrun_leftovers()
    out = tmp_path / "ddp"
    code = main(["train", "--data", str(kaggle_root), "--out", str(out), "--epochs", "2", "--batch-size", "16",
                 "--nproc", "2", "--width", str(SMOKE_WIDTH)])
    result = capfd.readouterr()
    assert code == 0, result.out[-2000:] + result.err[-3000:]
    history = json.loads((out / "history.json").read_text())
    val_size = len(load_partitions(SplitDir(sorted(out.glob("data/split-*"))[0]), out / "cache")["val"])
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["val_images"] == val_size for r in history), "every rank's shard is gathered, padding dropped"
    assert result.out.count("epoch 1/2") == 1, "only rank 0 reports and writes"
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["world"] == 2 and not any(k.startswith("module.") for k in state["model"])
    assert json.loads((out / "training.json").read_text())["epochs"] == 2  # what the model card reads
    assert torchrun_leftovers() == before, "torchrun's log folder is left in the temporary folder"


def test_loader_workers_none_on_cpu_some_on_a_gpu_and_an_explicit_count_wins():
    from histo_core.train import loader_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(TrainConfig(), cpu) == 0
    assert loader_workers(TrainConfig(num_workers=3), cpu) == 3 == loader_workers(TrainConfig(num_workers=3), gpu)
    cores = os.cpu_count() or 1
    assert loader_workers(TrainConfig(), gpu) == min(8, cores - 1)
    assert loader_workers(TrainConfig(), gpu, processes=cores) == 0  # one core per GPU process: nothing to spare


def test_batches_are_augmented_on_a_gpu_only_from_batch_128_unless_told():
    from histo_core.train import augments_on_device

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not augments_on_device(TrainConfig(batch_size=256), cpu)
    assert not augments_on_device(TrainConfig(batch_size=64), gpu)
    assert augments_on_device(TrainConfig(batch_size=128), gpu)
    assert augments_on_device(TrainConfig(batch_size=64, augment_on="device"), gpu)
    assert augments_on_device(TrainConfig(augment_on="device"), cpu)
    assert not augments_on_device(TrainConfig(batch_size=256, augment_on="loader"), gpu)


def test_blur_is_torchvisions_gaussian_blur_per_image_and_sigma_zero_leaves_images_alone():
    from torchvision.transforms.v2.functional import gaussian_blur

    from histo_core.data.dataset import gaussian_blur_each

    images = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    sigma = torch.tensor([0.0, 0.6, 1.5])
    out = gaussian_blur_each(images, sigma, radius=5)
    assert torch.equal(out[0], images[0])
    for i in (1, 2):
        reference = gaussian_blur(images[i].float(), kernel_size=[11, 11], sigma=[float(sigma[i])] * 2)
        assert (out[i].float() - reference).abs().max() <= 0.5 + 1e-3
    assert out[2].float().diff(dim=2).abs().mean() < out[1].float().diff(dim=2).abs().mean() < \
        images[1].float().diff(dim=2).abs().mean()


def test_blur_on_images_smaller_than_its_kernel_uses_the_widest_kernel_they_allow():
    from torchvision.transforms.v2.functional import gaussian_blur

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(0)
    out = build_augmentation(color_jitter=0, hed_jitter=0, stain_vector_jitter=0, blur_sigma=3.0)(images)
    torch.manual_seed(0)
    views = build_augmentation(color_jitter=0, hed_jitter=0, stain_vector_jitter=0)(images)
    sigma = torch.rand(2) * 3.0
    for i in range(2):  # radius 3 of the 9 that sigma 3 asks for: 8 rows reflect at most 3
        reference = gaussian_blur(views[i].float(), kernel_size=[7, 7], sigma=[float(sigma[i])] * 2)
        assert (out[i].float() - reference).abs().max() <= 0.5 + 1e-3


def test_blur_draws_its_sigma_per_image_after_every_other_draw():
    """A run with blur sees the same flips and colours as one without, then blurred: the
    blur's draws come last, so adding it leaves every other augmentation's as they were."""
    from histo_core.data.dataset import gaussian_blur_each

    images = torch.randint(0, 256, (8, 3, 96, 96), dtype=torch.uint8)
    torch.manual_seed(3)
    blurred = build_augmentation(blur_sigma=1.0)(images)
    torch.manual_seed(3)
    plain = build_augmentation()(images)
    sigma = torch.rand(8) * 1.0
    assert torch.equal(blurred, gaussian_blur_each(plain, sigma, radius=3))
    assert len(set(sigma.tolist())) == 8


def test_zoom_keeps_the_centre_and_factor_one_changes_nothing():
    from histo_core.data.dataset import scale_each

    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    assert torch.equal(scale_each(images, torch.ones(2)), images)
    # x2 is the centre 48 x 48 upsampled (bilinear); inside the border the two agree
    zoomed = scale_each(images, torch.tensor([2.0, 2.0]))
    crop = torch.nn.functional.interpolate(images[:, :, 24:72, 24:72].float(), size=96, mode="bilinear",
                                           align_corners=False)
    assert (zoomed[:, :, 1:-1, 1:-1].float() - crop[:, :, 1:-1, 1:-1]).abs().max() <= 0.5 + 1e-3
    # zooming out by 0.8: output column j shows input column (j + 0.5 - 48) / 0.8 + 47.5, so a
    # ramp of 2 per column becomes one of 2.5 through the same centre (edges reflected, not tested)
    ramp = (2 * torch.arange(96)).to(torch.uint8).expand(1, 3, 96, 96)
    shrunk = scale_each(ramp, torch.tensor([0.8]))
    j = torch.arange(10, 86)
    expected = 2 * ((j + 0.5 - 48) / 0.8 + 47.5)
    assert shrunk.dtype == torch.uint8 and shrunk.shape == ramp.shape
    assert (shrunk[0, :, :, 10:86].float() - expected).abs().max() <= 0.5 + 1e-3


def test_zoom_draws_its_factor_per_image_after_every_other_draw():
    """As with blur: a run with the zoom sees the flips and colours of one without it."""
    from histo_core.data.dataset import scale_each

    images = torch.randint(0, 256, (8, 3, 96, 96), dtype=torch.uint8)
    torch.manual_seed(5)
    zoomed = build_augmentation(scale_jitter=0.2)(images)
    torch.manual_seed(5)
    plain = build_augmentation()(images)
    factor = torch.exp((2 * torch.rand(8) - 1) * np.log1p(0.2))
    assert torch.equal(zoomed, scale_each(plain, factor))
    assert ((factor >= 1 / 1.2 - 1e-6) & (factor <= 1.2 + 1e-6)).all() and len(set(factor.tolist())) == 8
    assert factor.min() < 1 < factor.max()


def test_label_smoothing_pulls_the_training_target_in_from_0_and_1():
    from histo_core.train import training_loss

    labels = torch.tensor([1.0, 0.0])
    logits = torch.tensor([8.0, -8.0])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.equal(training_loss(0.0)(logits, labels), plain)
    # with eps = 0.1 the loss is lowest where the model says 0.95 and 0.05, not at ever larger logits
    best = torch.tensor([1.0, -1.0]) * float(np.log(0.95 / 0.05))
    best.requires_grad_(True)
    training_loss(0.1)(best, labels).backward()
    assert best.grad.abs().max() < 1e-6
    assert training_loss(0.1)(logits, labels) > training_loss(0.1)(best.detach(), labels)


def test_focal_loss_weighs_down_what_the_model_already_gets_right():
    from histo_core.train import training_loss

    labels = torch.tensor([1.0, 0.0])
    right, wrong = torch.tensor([3.0, -3.0]), torch.tensor([-1.0, 1.0])
    plain = training_loss(0.0)
    assert torch.allclose(training_loss(0.0, focal_gamma=1e-9)(right, labels), plain(right, labels))
    focal = training_loss(0.0, focal_gamma=2.0)
    # p_t = sigmoid(3) for the right pair, sigmoid(-1) for the wrong one: weights (1 - p_t) ** 2
    for logits in (right, wrong):
        weight = (1 - torch.sigmoid(logits * (2 * labels - 1))) ** 2
        assert torch.allclose(focal(logits, labels), plain(logits, labels) * weight.mean(), rtol=1e-5)
    assert focal(right, labels) / plain(right, labels) < 0.01 < 0.5 < focal(wrong, labels) / plain(wrong, labels)


@pytest.mark.parametrize("field, value", [("blur_sigma", 3.5), ("blur_sigma", -0.1), ("label_smoothing", 0.5),
                                          ("focal_gamma", -1.0), ("scale_jitter", 0.6), ("scale_jitter", -0.1)])
def test_blur_and_label_smoothing_out_of_range_are_refused_when_the_config_is_built(field, value):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=field):
        TrainConfig(**{field: value})
