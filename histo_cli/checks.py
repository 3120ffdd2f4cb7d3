"""What every command shares: the exit codes, the mapping from our errors to them, and
the checks a command makes before any work (a path, a device, the store), so that an
obvious mistake fails in a second with exit 2 or 3, not after an hour. A leaf module:
it imports nothing heavy (torch, Prefect, GX) at import time."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any

from histo_cli.options import add_config_options, resolve_config
from histo_core.config import StoreConfig
from histo_core.data.download import DownloadError
from histo_core.storage.base import StoreError

# Exit codes: what a script or a scheduler needs to tell apart.
OK, REJECTED, USAGE, ENVIRONMENT = 0, 1, 2, 3
# A folder we may not write, a read-only mount, a full disk or quota: the machine, not the arguments.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})
# Short spellings of the options used most; the long ones (--store.uri) work too.
STORE_ALIASES = {"store.uri": "--store", "store.endpoint_url": "--endpoint-url", "store.region": "--region"}


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and kind of one of our errors; None for a bug (shown as a traceback)."""
    from histo_core.data.sources import DataSourceError
    from histo_core.batch_verdicts import VerdictError
    from histo_core.errors import (CheckpointError, DependencyError, DeviceUnavailableError, RunGuardError,
                                   UnservableVersionError)
    from histo_core.registry import RegistryStateError
    from histo_core.split import SplitError
    from histo_core.validation import DataValidationError

    if isinstance(exc, CheckpointError):  # a file given as a checkpoint that is not one: the argument is wrong
        return USAGE, "usage: not a usable checkpoint"
    if isinstance(exc, (DataValidationError, DataSourceError, SplitError, UnservableVersionError)):
        return REJECTED, "the data or model was rejected"
    if isinstance(exc, (StoreError, DownloadError, ConnectionError, TimeoutError, DeviceUnavailableError,
                        RunGuardError)):
        return ENVIRONMENT, "environment (store, network, device)"
    if isinstance(exc, DependencyError):
        return ENVIRONMENT, "environment (a library cannot be imported)"
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return ENVIRONMENT, "environment (permissions, disk space)"
    if isinstance(exc, UnicodeEncodeError) and sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        # A file name from the data (an id) that this interpreter's locale cannot spell: LC_ALL=C
        # with PYTHONUTF8=0, or a Latin-1 locale. The data is fine; the machine's settings are not.
        text = exc.object  # always a str for an encode error
        if len(text) > 300:  # text being written rather than a name: the part around the letter
            text = text[max(0, exc.start - 100):exc.end + 100]
        return ENVIRONMENT, (f"environment (this locale's {sys.getfilesystemencoding()} encoding cannot spell "
                             f"{ascii(text)}: run with a UTF-8 locale or PYTHONUTF8=1)")
    if isinstance(exc, (ValueError, FileExistsError, FileNotFoundError, RegistryStateError, VerdictError)):
        return USAGE, "usage"
    return None


def store_config(args: argparse.Namespace) -> StoreConfig:
    return resolve_config(StoreConfig, args, prefix="store.", section="store")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, StoreConfig, "store.", STORE_ALIASES)


def require_dir(path: str | Path, what: str) -> None:
    """Fail in a second, before heavy imports or scans, on a path that is not there."""
    if "://" not in str(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such {what}")


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")


def require_data_root(data: str) -> None:
    """A local data root that is missing or in no supported layout fails at once (an
    s3:// root is checked when it is mirrored)."""
    if "://" not in data:
        from histo_core.data.sources import detect_layout

        require_dir(data, "data folder")
        detect_layout(Path(data))


def check_image_size(paths: Any, data: str, size: int = 96, sample: int = 8) -> None:
    """Before loading the model and scanning everything: when the first ``sample`` readable
    images all have another size, the data is not for this model (a mix is scored, and
    the odd ones reported per image)."""
    from histo_core.data.images import checked_stat, open_image
    from histo_core.data.sources import DataSourceError

    root, sizes = os.path.realpath(data), []
    for path in list(paths)[:sample]:
        try:
            checked_stat(path, root)  # no link out of the folder, no pipe that would block
            with open_image(path) as img:
                sizes.append(img.size)
        except Exception:  # noqa: BLE001 - unreadable files are reported per image later
            continue
    if sizes and all(s != (size, size) for s in sizes):
        width, height = sizes[0]
        raise DataSourceError(f"{data}: the images are {width}x{height} (the first {len(sizes)} checked); the "
                              f"model scores {size}x{size} patches: crop or resize them first")


def require_device(name: str) -> None:
    """A device the machine lacks (``cuda`` without a GPU) fails now (exit 3), before the
    data is read, not at the first batch."""
    from histo_core.inference import pick_device

    pick_device(name)


def require_store(store: StoreConfig, model_name: str) -> None:
    """Reach the store once before any work, and prove that it can be written (a probe
    object, removed after): an unreachable endpoint, a missing bucket or a read-only
    folder fails in seconds (exit 3), not after an hour of training."""
    from histo_core.registry import Registry
    from histo_core.storage import open_store, probe_writable

    registry = Registry(open_store(store), model_name)
    registry.versions()
    probe_writable(registry.store)
