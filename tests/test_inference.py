"""One inference path: the retrain's evaluation (decoded cache) and ``predict`` (image
files) give the same probability for the same image and checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from histo_core import steps
from histo_core.checkpoint import model_record, write_checkpoint
from histo_core.config import SMOKE_WIDTH, TrainConfig
from histo_core.evaluate import sigmoid
from histo_core.inference import load_model, pick_device, score_dataset
from histo_core.model import create_model
from histo_core.predict import predict_folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained model's checkpoint: what is compared is the scoring, not the model
    (the default architecture, narrowed)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "best.pt"
    cfg = TrainConfig(width=SMOKE_WIDTH)
    write_checkpoint(path, model_record(create_model(cfg.model, **cfg.model_kwargs()), cfg))
    return path


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 autocast on CUDA: a different batch make-up may pick another kernel, and bf16 keeps
# about 3 significant digits; on the CPU (float32) only the last bits may differ.
TOLERANCE = {"cpu": 1e-6, "cuda": 5e-3}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_and_predict_give_the_same_probabilities(kaggle_root, checkpoint, kaggle_split, tmp_path, tta,
                                                          device):
    split = kaggle_split
    test = steps.load_partitions(split, tmp_path / "cache")["test"]
    torch_device = pick_device(device)
    logits, _ = score_dataset(load_model(checkpoint, torch_device), test, torch_device, tta)
    evaluated = pd.Series(sigmoid(logits), index=steps.read_split(split)["id"].to_numpy()[test.indices])

    files = tmp_path / "files"  # the same test images as files to predict on, no others
    files.mkdir()
    for name in evaluated.index:
        shutil.copy(kaggle_root / "train" / f"{name}.tif", files)
    predicted = pd.read_csv(predict_folder(checkpoint, files, tmp_path / "p.csv", device=device, tta=tta).csv,
                            dtype={"id": str}).set_index("id")["label"]
    assert set(predicted.index) == set(evaluated.index)
    assert len(evaluated) > 20 and evaluated.std() > 1e-4, "an untrained model still scores images apart"
    difference = np.abs(predicted[evaluated.index].to_numpy() - evaluated.to_numpy()).max()
    print(f"{device}, tta={tta}: largest difference {difference:.2e} over {len(evaluated)} images")
    assert difference <= TOLERANCE[device]


def _images(root) -> torch.Tensor:
    """The 300 patches of ``root`` as one uint8 batch (N, 3, 96, 96), every value even, so
    that halving them is exact."""
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "train").glob("*.tif"))])
    return torch.from_numpy(pixels & 0xFE).permute(0, 3, 1, 2).contiguous()


def _adapted_logits(checkpoint, images: torch.Tensor, batches: list[tuple[torch.Tensor, list[str]]] | None = None):
    from histo_core.inference import adapt_batchnorm, score

    model, cpu = load_model(checkpoint), torch.device("cpu")
    used = adapt_batchnorm(model, batches or [(images[i:i + 100], [""] * len(images[i:i + 100]))
                                              for i in range(0, len(images), 100)], cpu)
    logits, _ = score(model, [(images, None)], cpu)
    return logits, used, model


def test_adapting_to_a_paler_site_scores_its_images_as_the_original_site(kaggle_root, checkpoint):
    """A second site whose scanner renders every patch paler (x / 2 + 64, the same on each
    channel). A network with the first site's statistics (adapted to its images, as if
    trained there) scores the second site's copies apart from the originals; with the
    second site's own statistics, alike (not exactly: the conv's zero padding does not
    move with the colours). Measured in logits, against their spread over the images."""
    from histo_core.inference import score

    original = _images(kaggle_root)
    paler = original // 2 + 64
    first_site, _, model = _adapted_logits(checkpoint, original)
    cpu = torch.device("cpu")
    with_first_statistics = score(model, [(paler, None)], cpu)[0]
    with_own_statistics = _adapted_logits(checkpoint, paler)[0]
    spread = first_site.std()
    apart = float(np.abs(with_first_statistics - first_site).mean() / spread)
    alike = float(np.abs(with_own_statistics - first_site).mean() / spread)
    print(f"mean |logit(original) - logit(paler)| / spread: {apart:.3f} with the first site's statistics, "
          f"{alike:.3f} with its own")
    assert alike < apart / 5
    assert np.corrcoef(first_site, with_own_statistics)[0, 1] > 0.99


def test_adapting_skips_unreadable_images_and_needs_enough_readable_ones(kaggle_root, checkpoint):
    from histo_core.errors import TooFewImagesToAdapt
    from histo_core.inference import MIN_ADAPT_IMAGES, adapt_batchnorm

    images = _images(kaggle_root)
    clean, used, model = _adapted_logits(checkpoint, images, [(images[:150], [""] * 150), (images[150:], [""] * 150)])
    unreadable = (torch.zeros(40, 3, 96, 96, dtype=torch.uint8), ["unreadable image: truncated"] * 40)
    mixed, used_mixed, _ = _adapted_logits(checkpoint, images,
                                           [(images[:150], [""] * 150), unreadable, (images[150:], [""] * 150)])
    assert used == used_mixed == 300 and np.array_equal(clean, mixed)
    assert model.features[0][1].num_batches_tracked == 2  # the first block's BatchNorm saw two batches

    before = {k: v.clone() for k, v in load_model(checkpoint).state_dict().items()}
    few = load_model(checkpoint)
    with pytest.raises(TooFewImagesToAdapt, match=f"at least {MIN_ADAPT_IMAGES} readable images, and there are 255"):
        adapt_batchnorm(few, [(images[:255], [""] * 255), unreadable], torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in few.state_dict().items()), "left as it was"
