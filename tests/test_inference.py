"""One inference path: the retrain's evaluation (decoded cache) and ``predict`` (image
files) give the same probability for the same image and checkpoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from histo_core import steps
from histo_core.checkpoint import model_record, write_checkpoint
from histo_core.config import SplitConfig, TrainConfig, ValidationConfig
from histo_core.evaluate import sigmoid
from histo_core.inference import load_model, pick_device, score_dataset
from histo_core.layout import DatasetDir
from histo_core.model import create_model
from histo_core.predict import predict_folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained model's checkpoint: what is compared is the scoring, not the model."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "best.pt"
    cfg = TrainConfig()
    write_checkpoint(path, model_record(create_model(cfg.model, dropout=cfg.dropout), cfg))
    return path


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_and_predict_give_the_same_probabilities(kaggle_root, checkpoint, tmp_path, tta):
    dataset = steps.validate(str(kaggle_root), DatasetDir(tmp_path / "dataset"), ValidationConfig())
    split = steps.split(dataset, SplitConfig())
    test = steps.load_partitions(split, tmp_path / "cache")["test"]
    device = pick_device("cpu")
    logits, _ = score_dataset(load_model(checkpoint, device), test, device, tta)
    evaluated = pd.Series(sigmoid(logits), index=steps.read_split(split)["id"].to_numpy()[test.indices])

    predicted = pd.read_csv(predict_folder(checkpoint, kaggle_root, tmp_path / "p.csv", device="cpu", tta=tta).csv,
                            dtype={"id": str}).set_index("id")["label"]
    assert len(evaluated) > 20 and evaluated.std() > 1e-4, "an untrained model still scores images apart"
    # Different batch compositions may change the last float bits of a convolution, no more.
    np.testing.assert_allclose(predicted[evaluated.index].to_numpy(), evaluated.to_numpy(), rtol=0, atol=1e-6)
