"""The installed package, as a user gets it from ``pip install``: every module ships,
every module imports from the installed copy, and the command line runs a retrain in an
empty folder that knows nothing of this checkout."""

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


def test_the_installed_command_retrains_in_an_empty_folder(installed_env, tmp_path):
    histo, env = str(installed_env.bin / "histo"), installed_env.env(PREFECT_HOME=str(tmp_path / "prefect"))

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([histo, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"histo {' '.join(args)} -> {done.returncode}\n{done.stdout[-2000:]}" \
                                     f"\n{done.stderr[-3000:]}"
        return done

    assert "retrain" in run("--help").stdout
    run("data", "synth", "data", "--count", "300", "--seed", "5")
    run("retrain", "--data", "data", "--store", "store", "--workdir", "work", "--epochs", "1", "--device", "cpu",
        timeout=600)
    versions = list((tmp_path / "store" / "models" / "pcam-cnn" / "versions").iterdir())
    assert len(versions) == 1 and (versions[0] / "model.pt").is_file() and (versions[0] / "version.json").is_file()
    assert versions[0].name in run("models", "list", "--store", "store").stdout
    assert not (tmp_path / "histo-work").exists()  # the folders given, not defaults beside the cwd
