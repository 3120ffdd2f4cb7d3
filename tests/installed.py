"""The project as a user installs it: a wheel built from a clean copy of the checkout,
installed without ``-e`` into a new virtual environment outside the checkout.

Building from a copy of the files git tracks (and untracked files it does not ignore),
not from the checkout itself, keeps stale ``build/`` folders and egg-info out of the
wheel. The new environment gets the wheel only (``--no-deps``); the third-party
dependencies are made visible by a ``.pth`` line naming this interpreter's
site-packages, because installing torch anew (5.5 GB) for every test run is not
practical. A line in a ``.pth`` file only adds a path: the editable finder of the
development install in that folder is not activated, so ``histo_*`` can only come from
the wheel, which ``check_imports`` asserts for every module.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Repository folder -> import name once installed (see pyproject.toml).
PACKAGES = {"histo_core": "histo_core", "histo_cli": "histo_cli",
            "tasks": "histo_tasks", "flows": "histo_flows", "deployments": "histo_deployments"}


@dataclass(frozen=True)
class InstalledEnv:
    root: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user's shell: no PYTHONPATH, this venv's bin first."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        return {**env, **extra}


def checkout_modules() -> set[str]:
    """Every module of the checkout, by the name it has once installed."""
    modules = set()
    for folder, name in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules.add(".".join([name, *parts]))
    return modules


def wheel_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".py")]
    return {n[:-3].removesuffix("/__init__").replace("/", ".") for n in names}


def _clean_copy(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # deleted but not yet committed files are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build_wheel(out: Path) -> Path:
    source = _clean_copy(out / "source")
    # No build isolation: the build backend (setuptools) is already in this environment,
    # so the test needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (out / "dist").glob("histo_retrain-*.whl")
    return wheel


def install(wheel: Path, root: Path) -> InstalledEnv:
    base = getattr(sys, "_base_executable", sys.executable)
    # No pip of its own (ensurepip costs seconds): this environment's pip installs into it.
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    env = InstalledEnv(root, wheel)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env.python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "zz_histo_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


def make_installed_env(tmp: Path) -> InstalledEnv:
    return install(build_wheel(tmp), tmp / "venv")
