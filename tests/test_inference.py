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
