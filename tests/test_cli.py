import subprocess
import sys

import pandas as pd
import pytest

from histo_cli.main import main


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
    assert "histo: error:" in err and "no such data folder" in err and "Traceback" not in err


def test_invalid_arguments_exit_non_zero():
    with pytest.raises(SystemExit) as exc:
        main(["retrain"])
    assert exc.value.code == 2
