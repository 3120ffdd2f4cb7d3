"""A checkpoint is checked against the architecture it records before any model is
allocated (issue 22, item 4): each mismatch is a ``CheckpointError`` naming it, exit 2,
never a RuntimeError from deep inside torch or a 184 GB allocation."""

from __future__ import annotations

import resource
import time

import pytest
import torch

from conftest import write_weights
from histo_cli.main import main
from histo_core.checkpoint import read_checkpoint
from histo_core.errors import CheckpointError
from histo_core.model import create_model


def _save(path, **changes):
    state = {"model": create_model("simple_cnn").state_dict(), "model_name": "simple_cnn", "model_kwargs": {}}
    state.update(changes)
    torch.save(state, path)
    return path


def _two_class_head():
    weights = create_model("simple_cnn").state_dict()
    weights["head.5.weight"], weights["head.5.bias"] = torch.zeros(2, 256), torch.zeros(2)
    return weights


CASES = {
    "resnet weights labelled simple_cnn": (
        dict(model=create_model("resnet18").state_dict()), "tensor(s) missing (first features.0.0.weight)"),
    "a 2-class head": (dict(model=_two_class_head()),
                       "2 of another shape (first head.5.bias: (2,) where 'simple_cnn' has (1,))"),
    "image_size 0": (dict(model_kwargs={"image_size": 0}), "image_size: Input should be greater than or equal to 32"),
    "an unknown argument": (dict(model_kwargs={"depth": 3}), "depth: Extra inputs are not permitted"),
    "a width of 10**5": (dict(model_kwargs={"width": 10**5}), "width: Input should be less than or equal to 256"),
    "another width than its weights": (dict(model_kwargs={"width": 8}), "of another shape"),
    "a head of 10**7 units": (dict(model_kwargs={"hidden": 10**7}),
                              "hidden: Input should be less than or equal to 4096"),
    "an unknown architecture": (dict(model_name="vit_h14"), "unknown model 'vit_h14'"),
    "a dropout of 2": (dict(model_kwargs={"dropout": 2.0}), "dropout: Input should be less than 1"),
    "arguments that are not a mapping": (dict(model_kwargs=[1, 2]), "model arguments must be a mapping"),
    "weights that are not tensors": (dict(model={"x": 1}), "not a mapping of tensor names to tensors"),
    "another image size than its weights": (dict(model_kwargs={"image_size": 64}), "of another shape"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_that_does_not_fit_its_architecture_is_named_before_allocation(tmp_path, case):
    changes, phrase = CASES[case]
    path = _save(tmp_path / "model.pt", **changes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="model.pt: ") as caught:
        read_checkpoint(path)
    assert phrase in str(caught.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024  # KiB: nothing big allocated


def test_predict_with_a_mismatched_checkpoint_exits_2_naming_the_mismatch(tmp_path, kaggle_root, capsys):
    path = _save(tmp_path / "model.pt", model_kwargs={"hidden": 10**7})
    start = time.perf_counter()
    code = main(["predict", "--data", str(kaggle_root), "--checkpoint", str(path), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "hidden: Input should be less than or equal to 4096" in err and "Traceback" not in err
    assert time.perf_counter() - start < 60 and not (tmp_path / "s.csv").exists()


def test_a_checkpoint_that_fits_still_loads(tmp_path):
    state = read_checkpoint(write_weights(tmp_path / "ok.pt"))
    assert state["model_name"] == "simple_cnn"
    state = read_checkpoint(_save(tmp_path / "small.pt", model=create_model("simple_cnn", hidden=32).state_dict(),
                                  model_kwargs={"hidden": 32}))
    assert state["model_kwargs"] == {"hidden": 32}
