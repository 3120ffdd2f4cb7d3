"""The installed package, as a user gets it from ``pip install``: every module ships,
every module imports from the installed copy, and the command line runs in an empty folder
that knows nothing of this checkout."""

from __future__ import annotations

import json
import subprocess

import pytest

from installed import REPO, checkout_modules, wheel_modules

pytestmark = pytest.mark.slow

CHECK_IMPORTS = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    found[name] = module.__file__
print(json.dumps(found))
"""


def test_the_wheel_ships_every_module_and_nothing_else(installed_env):
    shipped = wheel_modules(installed_env.wheel)
    assert shipped == checkout_modules(), (
        f"missing from the wheel: {sorted(checkout_modules() - shipped)}; "
        f"not in the checkout's packages: {sorted(shipped - checkout_modules())}")
    assert not any(m.split(".")[0] in {"tasks", "flows", "deployments", "tests", "bench"} for m in shipped)


def test_every_module_imports_from_the_installed_copy(installed_env, tmp_path):
    modules = sorted(checkout_modules() - {"histo_cli.ddp_worker"})  # a torchrun entry point: runs on import
    done = subprocess.run([str(installed_env.python), "-c", CHECK_IMPORTS, *modules], cwd=tmp_path,
                          env=installed_env.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout.strip().splitlines()[-1])
    outside = {m: f for m, f in files.items() if not f.startswith(str(installed_env.root))}
    assert not outside, f"imported from outside the installed environment: {outside}"
    assert not any(f.startswith(str(REPO)) for f in files.values())


def test_the_installed_command_runs_in_an_empty_folder(installed_env, tmp_path):
    """The console script and its subcommands, from the wheel. A whole retrain from the
    installed package, in a folder that knows nothing of this checkout, is
    test_worker_e2e's: its worker runs this environment."""
    histo, env = str(installed_env.bin / "histo"), installed_env.env(PREFECT_HOME=str(tmp_path / "prefect"))
    folder = tmp_path / "empty"
    folder.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([histo, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"histo {' '.join(args)} -> {done.returncode}\n{done.stdout[-2000:]}" \
                                     f"\n{done.stderr[-3000:]}"
        return done

    assert "retrain" in run("--help").stdout
    run("data", "synth", "data", "--count", "20", "--seed", "5")
    assert len(list((folder / "data" / "train").glob("*.tif"))) == 20
    assert "no versions of pcam-cnn" in run("models", "list", "--store", "store").stdout.lower()
    assert sorted(p.name for p in folder.iterdir()) == ["data"]  # only what it was told to write
