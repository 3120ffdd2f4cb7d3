"""The command line as a new user meets it: exact exit codes, the files written (and not
written), and messages that say what was wrong.

Commands run in this process (``histo_cli.main.main``, its output captured): a
subprocess per command would prove nothing more and cost 6-8 s of imports each.
``test_version`` runs the real entry point once; ``test_wheel`` runs the installed one."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_cli.main import main
from histo_core.checkpoint import model_record, write_checkpoint
from histo_core.config import TrainConfig
from histo_core.model import create_model


def histo(*args: str) -> subprocess.CompletedProcess:
    """``histo ARGS`` in this process: its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["histo", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "best.pt"
    write_checkpoint(path, model_record(create_model(TrainConfig().model), TrainConfig()))
    return path


def _images(folder: Path, size: int, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((size, size, 3), 30 * i + 40, np.uint8)).save(folder / f"p{i}.tif")
    return folder


def test_version():
    from histo_core import __version__

    done = subprocess.run([sys.executable, "-m", "histo_cli.main", "--version"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"histo-retrain {__version__}"


def test_help_answers_with_docstrings_stripped():
    """``python -OO`` (PYTHONOPTIMIZE=2 in some container images) strips docstrings; the root
    help was once built from the module docstring and raised AttributeError there."""
    done = subprocess.run([sys.executable, "-OO", "-m", "histo_cli.main", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "histo demo" in done.stdout and "retrain" in done.stdout


def test_predict_writes_exactly_what_kaggle_accepts_in_the_sample_order(checkpoint, tmp_path):
    data = _images(tmp_path / "test", 96)
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\np3,0\np1,0\np0,0\np2,0\n")
    done = histo("predict", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "s.csv"),
                 "--order", str(sample), "--batch-size", "3", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    out = pd.read_csv(tmp_path / "s.csv", dtype={"id": str})
    assert list(out.columns) == ["id", "label"] and out["id"].tolist() == ["p3", "p1", "p0", "p2"]
    assert not (tmp_path / "s.errors.csv").exists()
    assert "img/s" in done.stderr  # the progress bar's rate


def test_predict_with_a_named_registry_version_and_the_options_of_its_config(checkpoint, tmp_path):
    """--version scores with that version, not the champion; PredictConfig's fields are the
    options, a YAML file gives them too, and a contradiction is refused before any work."""
    import yaml

    from histo_core.registry import Registry
    from histo_core.storage import LocalStore

    data = _images(tmp_path / "test", 96)
    registry = Registry(LocalStore(tmp_path / "store"), "pcam-cnn")
    other = tmp_path / "other.pt"
    torch_model = create_model(TrainConfig().model)
    for parameter in torch_model.parameters():  # a different model: different scores
        parameter.data.normal_(0, 0.1)
    write_checkpoint(other, model_record(torch_model, TrainConfig()))
    named = registry.new_version_id()
    registry.publish_version(named, {"model.pt": checkpoint}, {})
    champion = registry.new_version_id()
    registry.publish_version(champion, {"model.pt": other}, {})
    registry.set_champion(champion, None)

    config = tmp_path / "predict.yaml"
    config.write_text(f"data: {data}\nstore:\n  uri: {tmp_path / 'store'}\nbatch_size: 2\ndevice: cpu\n")
    done = histo("predict", "--config", str(config), "--version", named, "--out", str(tmp_path / "v.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"model: pcam-cnn {named} (version of file://" in done.stdout
    by_version = pd.read_csv(tmp_path / "v.csv")
    done = histo("predict", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "c.csv"))
    assert done.returncode == 0 and f"model: checkpoint {checkpoint}" in done.stdout
    assert by_version.equals(pd.read_csv(tmp_path / "c.csv"))
    done = histo("predict", "--config", str(config), "--out", str(tmp_path / "h.csv"))
    assert done.returncode == 0 and f"{champion} (champion of" in done.stdout
    assert not np.allclose(pd.read_csv(tmp_path / "h.csv")["label"], by_version["label"])

    printed = histo("predict", "--config", str(config), "--tta", "--print-config")
    resolved = yaml.safe_load(printed.stdout)
    assert resolved["tta"] is True and resolved["batch_size"] == 2 and resolved["version"] is None
    done = histo("predict", "--config", str(config), "--version", "v-nope")
    assert done.returncode == 2 and "no complete version 'v-nope'" in done.stderr and "models list" in done.stderr
    done = histo("predict", "--config", str(config), "--version", named, "--checkpoint", str(checkpoint))
    assert done.returncode == 2 and "either checkpoint (a weights file) or version" in done.stderr
    assert not (tmp_path / "predictions.csv").exists()


def test_evaluate_takes_its_evaluation_options_from_the_config(tmp_path):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text("data: x\nevaluation:\n  target_sensitivity: 0.8\n  bootstrap: 200\n")
    done = histo("evaluate", "--config", str(config), "--data", "x", "--no-tta", "--print-config")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["evaluation"] == {"tta": False, "target_sensitivity": 0.8, "bootstrap": 200,
                                                         "batch_size": 256}
    done = histo("evaluate", "--data", "x", "--target-sensitivity", "1.5")
    assert done.returncode == 2 and "--target-sensitivity: Input should be less than or equal to 1" in done.stderr


def test_predict_on_wrong_size_images_fails_and_says_why(checkpoint, tmp_path):
    data = _images(tmp_path / "test", 128)
    done = histo("predict", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert done.returncode == 1 and "the images are 128x128" in done.stderr and "96x96" in done.stderr
    assert not (tmp_path / "p.csv").exists(), "refused before scoring anything"
    # One odd image among right-sized ones is scored around and reported on its own.
    Image.fromarray(np.full((96, 96, 3), 90, np.uint8)).save(data / "a-ok.tif")
    Image.fromarray(np.full((96, 96, 3), 90, np.uint8)).save(data / "b-ok.tif")
    for old in data.glob("p[123].tif"):
        old.unlink()
    done = histo("predict", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert done.returncode == 1 and "1 of 3 images could not be scored" in done.stderr
    errors = pd.read_csv(tmp_path / "p.errors.csv")
    assert errors["id"].tolist() == ["p0"] and "size 128x128, expected 96x96" in errors["error"][0]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2


def test_evaluate_on_wrong_size_images_names_the_size(checkpoint, tmp_path):
    data = _images(tmp_path / "d" / "images", 128).parent
    (data / "labels.csv").write_text("id,label\n" + "".join(f"p{i},{i % 2}\n" for i in range(4)))
    done = histo("evaluate", "--checkpoint", str(checkpoint), "--data", str(data))
    assert done.returncode == 1
    assert "the images are 128x128" in done.stderr and "scores 96x96 patches" in done.stderr


@pytest.mark.parametrize("args, phrase", [
    (["--data", "{tmp}/nope"], "no such data folder"),
    (["--data", "{tmp}/data", "--model", "resnet19"], "invalid choice: 'resnet19' (choose from 'simple_cnn'"),
    (["--data", "{tmp}/data", "--device", "gpu"], "device 'gpu': not a device name; use auto, cpu, cuda"),
])
def test_train_mistakes_fail_at_once_and_leave_nothing(kaggle_root, tmp_path, args, phrase):
    (tmp_path / "data").symlink_to(kaggle_root)
    done = histo("train", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and phrase in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_the_machine_lacks_is_an_environment_error_before_any_work(kaggle_root, checkpoint, tmp_path):
    done = histo("train", "--data", str(kaggle_root), "--out", str(tmp_path / "out"), "--device", "cuda")
    assert done.returncode == 3 and "device 'cuda': this machine has no CUDA GPU" in done.stderr
    assert "use device auto or cpu" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    done = histo("predict", "--checkpoint", str(checkpoint), "--data", str(kaggle_root / "train"),
                 "--out", str(tmp_path / "p.csv"), "--device", "cuda:1")
    assert done.returncode == 3 and "device 'cuda:1'" in done.stderr and not (tmp_path / "p.csv").exists()


def test_evaluate_with_a_missing_checkpoint_fails_before_any_scan(tmp_path, kaggle_root):
    done = histo("evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(kaggle_root))
    assert done.returncode == 2 and "nope.pt: no such checkpoint file" in done.stderr


def test_models_list_and_events_as_json(tmp_path):
    from conftest import publish_real_version
    from histo_core.registry import Registry
    from histo_core.storage import LocalStore

    registry = Registry(LocalStore(tmp_path / "store"), "pcam-cnn")
    a, b = publish_real_version(registry, tmp_path, 1), publish_real_version(registry, tmp_path, 2)
    store = ["--store", str(tmp_path / "store")]
    for version in (a, b):
        assert histo("models", "promote", version, *store).returncode == 0
    assert histo("models", "rollback", *store).returncode == 0

    listing = json.loads(histo("models", "list", "--json", *store).stdout)
    assert [(r["version"], r["status"], r["champion"]) for r in listing] == [
        (a, "champion", True), (b, "rolled back", False)]
    assert listing[0]["created"].endswith("UTC")
    table = histo("models", "list", *store).stdout
    assert f"* {a}" in table and "rolled back" in table
    events = json.loads(histo("models", "events", "--json", *store).stdout)
    assert [(e["kind"], e["version"]) for e in events] == [
        ("manual-promotion", a), ("manual-promotion", b), ("rollback", a)]


def test_models_show_without_a_champion_says_so(tmp_path):
    done = histo("models", "show", "--store", str(tmp_path / "empty"))
    assert done.returncode == 2 and "has no champion" in done.stderr


def test_every_config_field_is_an_option_with_its_default_in_the_help():
    import argparse

    from histo_cli.main import build_parser
    from histo_core.config import EvalConfig, PredictConfig, RetrainConfig, TrainConfig, ValidationConfig

    def dests(*command: str) -> set[str]:
        parser = build_parser()
        for name in command:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return {a.dest for a in parser._actions}

    def paths(model) -> set[str]:
        return {f"{name}.{sub}" if hasattr(field.annotation, "model_fields") else name
                for name, field in model.model_fields.items()
                for sub in getattr(field.annotation, "model_fields", [None])}

    assert paths(TrainConfig) <= dests("train")
    assert paths(RetrainConfig) <= dests("retrain") and paths(RetrainConfig) <= dests("serve")
    assert paths(PredictConfig) <= dests("predict") and paths(EvalConfig) <= dests("evaluate")
    assert paths(ValidationConfig) <= dests("data", "validate")
    text = histo("train", "--help").stdout
    assert "--weight-decay" in text and "(default: 0.0001)" in text and "{auto,loader,device}" in text


def test_every_option_and_argument_of_every_command_says_what_it_is():
    import argparse

    from histo_cli.main import build_parser

    def commands(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*path, name))
        yield path, parser

    missing = [f"histo {' '.join(path)} {action.option_strings or action.dest}"
               for path, parser in commands(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and action.help != argparse.SUPPRESS and not (action.help or "").strip()]
    assert not missing, missing


def test_a_config_file_with_options_on_top_and_the_resolved_config_printed(tmp_path):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text("data: /data/pcam\ntrain:\n  epochs: 7\n  lr: 0.0005\ngate:\n  auc_floor: 0.9\n")
    done = histo("retrain", "--config", str(config), "--epochs", "3", "--store", "s3://b/p", "--print-config")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["data"] == "/data/pcam" and resolved["train"]["epochs"] == 3  # the option wins
    assert resolved["train"]["lr"] == 0.0005 and resolved["gate"]["auc_floor"] == 0.9
    assert resolved["store"]["uri"] == "s3://b/p" and resolved["train"]["batch_size"] == 64  # defaults kept
    # The same file drives histo train: its train, validation and split sections.
    done = histo("train", "--config", str(config), "--data", "x", "--out", "y", "--print-config")
    assert yaml.safe_load(done.stdout)["train"]["epochs"] == 7
    # an optional number set in the file is unset again with "none", as the help shows its default
    config.write_text("train:\n  patience: 6\n  min_epochs: 20\n")
    done = histo("train", "--config", str(config), "--data", "x", "--out", "y", "--patience", "none",
                 "--min-epochs", "NULL", "--print-config")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["train"]
    assert (resolved["patience"], resolved["min_epochs"]) == (None, None)
    done = histo("train", "--data", "x", "--out", "y", "--patience", "nones")
    assert done.returncode == 2 and "--patience: Input should be a valid integer" in done.stderr


def test_a_bad_value_names_the_option_and_the_rule_and_writes_nothing(kaggle_root, tmp_path):
    done = histo("train", "--data", str(kaggle_root), "--out", str(tmp_path / "out"), "--lr", "-1")
    assert done.returncode == 2
    assert "--lr: Input should be greater than 0 (got '-1')" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    done = histo("retrain", "--epochs", "3")
    assert done.returncode == 2 and "--data: Field required" in done.stderr


def test_download_with_no_network_is_an_environment_error_that_says_what_to_do(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the connection is refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = histo("data", "download", "pcam", str(tmp_path / "pcam"), "--splits", "valid",
                 "--url", f"http://127.0.0.1:{port}/{{name}}")
    assert done.returncode == 3
    assert "could not download from 127.0.0.1" in done.stderr and "check the network" in done.stderr
    assert "resume from 0 bytes" not in done.stderr


def _docs_status(docs: Path) -> str:
    """The status GX's own validation page states."""
    [page] = (docs / "validations").rglob("*.html")
    return re.search(r"Status:\s*(?:<[^>]+>\s*)*(\w+)", page.read_text()).group(1)


@pytest.mark.parametrize("one_class", [False, True])
def test_the_command_line_the_report_and_the_data_docs_give_one_verdict(tmp_path, one_class):
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    data = write_kaggle_layout(tmp_path / "data", SyntheticSpec(count=60, seed=2))
    files = sorted((data / "train").iterdir())
    Image.fromarray(np.full((96, 96, 3), 250, np.uint8)).save(files[0])  # near-blank: a warning
    files[1].write_bytes(b"not an image")  # quarantined: 1 of 60, under the 5% limit
    if one_class:
        labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
        labels.assign(label=1).to_csv(data / "train_labels.csv", index=False)
    done = histo("data", "validate", str(data), "--report", str(tmp_path / "r.json"), "--docs", str(tmp_path / "d"))
    report = json.loads((tmp_path / "r.json").read_text())
    index = (tmp_path / "d" / "index.html").read_text()
    expected = ("stopped", 1, "Failed") if one_class else ("passed", 0, "Succeeded")
    assert (report["verdict"], done.returncode, _docs_status(tmp_path / "d")) == expected
    assert f"Data set validation: {expected[0]}" in index
    assert files[0].stem in index and "near-blank" in index and files[1].stem in index  # rows named by id
    assert "http://" not in index and "https://" not in index  # readable offline
    pages = list((tmp_path / "d").rglob("*.html"))
    assert len(pages) == 3 and not any(_remote_resources(p) for p in pages), "every page loads nothing remote"
    [page] = (tmp_path / "d" / "validations").rglob("*.html")
    logo = re.search(r'<img[^>]*src="([^"]+logo[^"]+)"', page.read_text()).group(1)
    assert (page.parent / logo).resolve().is_file(), "the logo comes from the site's own static/ folder"


def _remote_resources(page: Path) -> list[str]:
    """What opening ``page`` would fetch from another host (links to follow do not count)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Loads(HTMLParser):
        def handle_starttag(self, tag, attrs):
            url = dict(attrs).get("href" if tag == "link" else "src") or ""
            if tag in ("link", "script", "img", "iframe") and url.startswith(("http:", "https:", "//")):
                found.append(url)

    text = page.read_text()
    Loads().feed(text)
    return found + re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", text)


def test_retrain_with_an_unreachable_store_fails_in_seconds_before_any_work(kaggle_root, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = histo("retrain", "--data", str(kaggle_root), "--store", "s3://bucket/p", "--endpoint-url",
                 f"http://127.0.0.1:{port}", "--region", "us-east-1", "--workdir", str(tmp_path / "work"))
    assert done.returncode == 3 and "histo: error (environment" in done.stderr
    assert not (tmp_path / "work").exists(), "nothing was validated or trained"


def test_train_on_a_rejected_data_set_exits_1_and_leaves_no_folder(tmp_path):
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    data = write_kaggle_layout(tmp_path / "data", SyntheticSpec(count=40, seed=3))
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    labels.assign(label=0).to_csv(data / "train_labels.csv", index=False)
    done = histo("train", "--data", str(data), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "only label ['0'] present" in done.stderr
    assert not (tmp_path / "out").exists()
