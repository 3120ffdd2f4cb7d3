import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import write_weights

from histo_cli.main import main
from histo_core.config import SMOKE_WIDTH


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "histo_cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo", "retrain", "serve", "data"):
        assert command in out.stdout


def test_synth_writes_a_kaggle_layout(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "d"), "--count", "8", "--seed", "2"]) == 0
    assert len(pd.read_csv(tmp_path / "d" / "train_labels.csv")) == 8
    assert "wrote 8 patches" in capsys.readouterr().out


def test_bad_data_root_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["retrain", "--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "histo: error (usage):" in err and "no such data folder" in err and "Traceback" not in err


def test_invalid_arguments_exit_non_zero():
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x"])  # --data missing
    assert exc.value.code == 2


def test_models_list_promote_rollback_show(tmp_path, capsys):
    from histo_core.registry import Registry
    from histo_core.storage import LocalStore

    registry = Registry(LocalStore(tmp_path / "store"), "pcam-cnn")
    versions = []
    for seed in (1, 2):  # real weights: promote checks that a version loads before it may serve
        versions.append(registry.new_version_id())
        registry.publish_version(versions[-1], {"model.pt": write_weights(tmp_path / f"{seed}.pt", seed)},
                                 {"metrics": {"auc": 0.9}})
    store = ["--store", str(tmp_path / "store")]
    assert main(["models", "promote", versions[0], *store]) == 0
    assert main(["models", "promote", versions[1], *store]) == 0
    capsys.readouterr()
    assert main(["models", "promote", versions[1], *store]) == 0  # already champion: a no-op that says so
    assert f"{versions[1]} is already the champion" in capsys.readouterr().out
    assert main(["models", "list", *store]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith(f"  {versions[0]}  ") and listing[1].startswith(f"* {versions[1]}  ")
    assert listing[0].endswith("AUC 0.9000  superseded") and listing[1].endswith("AUC 0.9000  champion")
    assert main(["models", "rollback", *store]) == 0  # the no-op left no V -> V step in the chain
    assert f"{versions[1]} -> {versions[0]}" in capsys.readouterr().out
    assert main(["models", "show", *store]) == 0
    assert f'"version": "{versions[0]}"' in capsys.readouterr().out
    assert main(["models", "rollback", *store]) == 2
    assert "no earlier champion to roll back to" in capsys.readouterr().err
    kinds = sorted(k.split("-", 1)[1].rsplit("-v", 1)[0] for k in
                   (p.name for p in (tmp_path / "store/models/pcam-cnn/events").iterdir()))
    assert kinds == ["manual-promotion", "manual-promotion", "rollback"]


def test_data_validate_reports_every_row_and_exits_by_verdict(kaggle_root, tmp_path, capsys):
    import json

    report = tmp_path / "r.json"
    assert main(["data", "validate", str(kaggle_root), "--report", str(report), "--docs", str(tmp_path / "d")]) == 0
    data = json.loads(report.read_text())
    assert data["verdict"] == "passed" and len(data["rows"]) == 300
    assert set(data["rows"][0]) == {"id", "status", "reason"}
    assert (tmp_path / "d" / "index.html").exists()
    # The rules are the validation config's: the same data fails a stricter one.
    assert main(["data", "validate", str(kaggle_root), "--min-rows", "301"]) == 1
    assert "only 300 usable rows, fewer than the minimum of 301" in capsys.readouterr().err
    one_class = tmp_path / "one"
    main(["data", "synth", str(one_class), "--count", "30"])
    labels = one_class / "train_labels.csv"
    labels.write_text(labels.read_text().replace(",1\n", ",0\n"))
    capsys.readouterr()
    assert main(["data", "validate", str(one_class)]) == 1
    assert "data set rejected: only label ['0'] present" in capsys.readouterr().err


def test_predict_scores_unlabelled_files_and_reports_unreadable_ones(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from histo_core.model import create_model

    checkpoint = tmp_path / "m.pt"
    torch.save({"model": create_model("simple_cnn").state_dict(), "model_name": "simple_cnn",
                "model_kwargs": {"dropout": 0.5}}, checkpoint)
    folder = tmp_path / "test"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((96, 96, 3), 40 * i, np.uint8)).save(folder / f"p{i}.tif")
    (folder / "broken.tif").write_bytes(b"nope")
    assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(folder),
                 "--out", str(tmp_path / "o.csv")]) == 1  # one image could not be scored
    out = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    assert list(out.columns) == ["id", "label"] and sorted(out["id"]) == [f"p{i}" for i in range(5)]
    assert out["label"].astype(float).between(0, 1).all()
    errors = pd.read_csv(tmp_path / "o.errors.csv", keep_default_na=False)
    assert errors["id"].tolist() == ["broken"] and errors["error"][0].startswith("unreadable image")
    assert "1 of 6 images could not be scored" in capsys.readouterr().err
    # Adapting to the data needs more readable images than these five: a usage error, no CSV.
    assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(folder), "--adapt-to-data",
                 "--out", str(tmp_path / "adapted.csv")]) == 2
    assert "needs at least 256 readable images, and there are 5" in capsys.readouterr().err
    assert not (tmp_path / "adapted.csv").exists()


def test_train_then_evaluate_from_the_command_line(kaggle_root, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "--data", str(kaggle_root), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--augment-on", "device", "--width", str(SMOKE_WIDTH)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["augment_on"] == "device"
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out and "best model:" in captured.out
    # The in-epoch progress bar was drawn. Which frames: tqdm draws at most every 0.1 s, and
    # the bar is cleared at the epoch's end, so on a fast machine the last frame drawn can be 5/6.
    assert re.search(r"epoch 1/1:\s+\d+%\|.*batch", captured.err), captured.err[-500:]
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "history.json", "config.json", "split.json"}
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(kaggle_root), "--no-tta",
                 "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 300 and metrics["tta"] is False and 0 <= metrics["auc"] <= 1
    # No validation images of its own: calibration and operating point are cross-fitted.
    assert metrics["operating_point"]["fitted_on"] == "5-fold cross-fitting" and metrics["temperature"] > 0
    captured = capsys.readouterr()
    assert "with TTA" not in captured.out and "chosen on these images by 5-fold cross-fitting" in captured.out
    assert metrics["adapted_to_data"] is False and "adapted" not in captured.out
    # The same images with the network's BatchNorm statistics re-estimated on them first.
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(kaggle_root), "--no-tta",
                 "--adapt-to-data", "--json", str(tmp_path / "adapted.json")]) == 0
    adapted = json.loads((tmp_path / "adapted.json").read_text())
    assert adapted["adapted_to_data"] is True and adapted["n"] == 300 and adapted["auc"] != metrics["auc"]
    assert "on 300 images, BatchNorm statistics adapted to them" in capsys.readouterr().out
    split = pd.read_csv(next(out.glob("data/split-*/split.csv")), dtype={"id": str})
    counts = split["partition"].value_counts()
    assert f"warning: {counts['train']} of the 300 images were used to train this model" in captured.err

    # Only the held-out test images, calibrated and with the operating point chosen on val, as a retrain does.
    # With TTA, the default, here, where it scores only the test and validation images.
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(kaggle_root), "--split", "test",
                 "--out", str(tmp_path / "eval")]) == 0
    captured = capsys.readouterr()
    assert "were used to train" not in captured.err and "chosen on the validation images" in captured.out
    assert "with TTA" in captured.out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == counts["test"] and metrics["split"] == "test" and "temperature" in metrics
    assert metrics["tta"] is True
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype={"id": str})
    assert list(predictions.columns) == ["id", "label", "challenger"]  # the columns a retrain writes
    assert set(predictions["id"]) == set(split.loc[split["partition"] == "test", "id"])
    assert all((tmp_path / "eval" / f"{n}.png").stat().st_size > 5000 for n in ("roc", "pr", "reliability"))


@pytest.mark.parametrize("make, phrase", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable PyTorch checkpoint"),
    (lambda p: p.write_bytes(_torch_bytes({"x": 1})[:40]), "not a readable PyTorch checkpoint"),
    (lambda p: p.write_bytes(_torch_bytes({"weights": 1})), "not a histo-retrain checkpoint"),
    (lambda p: p.write_bytes(_torch_bytes({"x": _Unsafe()})), "refused: it holds Python objects"),
    (lambda p: None, "no such checkpoint file"),
])
def test_a_bad_checkpoint_is_named_and_never_loaded_unsafely(tmp_path, kaggle_root, make, phrase, capsys):
    """Exit 2: the file given as a checkpoint is not one (test_checkpoint_architecture has
    the files that are checkpoints of something else). torch's own text suggests
    weights_only=False, which would run the file's code: never passed on."""
    checkpoint = tmp_path / "model.pt"
    make(checkpoint)
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(kaggle_root)])
    out, err = capsys.readouterr()
    assert code == 2, err[-2000:]
    assert f"{checkpoint}: " in err and phrase in err
    assert "Traceback" not in err and "weights_only" not in err and "PWNED" not in out


class _Unsafe:
    def __reduce__(self):
        return (print, ("PWNED",))


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_exit_codes_tell_rejected_data_usage_and_environment_apart(tmp_path, capsys):
    from histo_cli.main import ENVIRONMENT, REJECTED, USAGE

    one_class = tmp_path / "one"
    main(["data", "synth", str(one_class), "--count", "30"])
    (one_class / "train_labels.csv").write_text("id,label\n" + "".join(
        f"{p.stem},1\n" for p in sorted((one_class / "train").iterdir())))
    assert main(["data", "validate", str(one_class)]) == REJECTED
    assert main(["models", "rollback", "--store", str(tmp_path / "empty-store")]) == USAGE
    assert "(usage)" in capsys.readouterr().err
    # A store that does not answer: an environment fault, said so.
    assert main(["models", "list", "--store", "s3://bucket/p", "--endpoint-url", "http://127.0.0.1:9"]) == ENVIRONMENT
    assert "(environment (store, network, device))" in capsys.readouterr().err
