"""Open one image by its manifest path: a file on disk, or a patch inside a PCam HDF5 file.

HDF5 patches are addressed as ``<file.h5>::<index>`` and read lazily, one patch at a
time, so a 262,144-patch split never has to fit in memory. File handles are kept per
process (each worker of a process pool opens its own).
"""

from __future__ import annotations

import functools
import os
import stat as stat_mode
from typing import Any

import numpy as np
from PIL import Image

H5_SEP = "::"


def is_h5(path: str) -> bool:
    return H5_SEP in path


@functools.lru_cache(maxsize=16)
def _h5_dataset(path: str, pid: int) -> Any:  # pid in the key: a forked worker must not reuse a parent handle
    import h5py

    return h5py.File(path, "r")["x"]


def h5_pixels(path: str) -> np.ndarray:
    """The (96, 96, 3) uint8 patch at ``<file.h5>::<index>``."""
    file, index = path.rsplit(H5_SEP, 1)
    return np.asarray(_h5_dataset(file, os.getpid())[int(index)])


def stat(path: str) -> os.stat_result:
    """Size and mtime of the file that holds ``path`` (the HDF5 file for a patch in one)."""
    return os.stat(path.rsplit(H5_SEP, 1)[0] if is_h5(path) else path)


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def checked_stat(path: str, root: str | None) -> os.stat_result:
    """``stat`` of the file behind ``path``, refusing what must not be opened.

    ``root`` is the data root's real path. A file whose real path lies outside it (a
    symbolic link, or a folder that is one) and anything but a regular file (a device,
    a pipe that would block a reader, a folder) raise ``PermissionError`` with the reason.
    One ``lstat`` per file; real paths are resolved once per folder, and per file only
    for links, because resolving every file costs ~40 us, a third of inspecting it.
    """
    file = path.rsplit(H5_SEP, 1)[0] if is_h5(path) else path
    st = os.lstat(file)
    link = stat_mode.S_ISLNK(st.st_mode)
    if root is not None:
        real = os.path.realpath(file) if link else os.path.join(_real_folder(os.path.dirname(file) or "."),
                                                                  os.path.basename(file))
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise PermissionError(f"{file} resolves to {real}, outside the data root {root}; not opened")
    if link:
        st = os.stat(file)
    if not stat_mode.S_ISREG(st.st_mode):
        raise PermissionError(f"{file} is not a regular file (a folder, device or pipe); not opened")
    return st


def open_image(path: str) -> Image.Image:
    """A PIL image for ``path``; the caller closes it (``with open_image(p) as img``)."""
    if is_h5(path):
        return Image.fromarray(h5_pixels(path))
    return Image.open(path)
