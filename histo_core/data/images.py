"""Open one image by its manifest path: a file on disk, or a patch inside a PCam HDF5 file.

HDF5 patches are addressed as ``<file.h5>::<index>`` and read lazily, one patch at a
time, so a 262,144-patch split never has to fit in memory. File handles are kept per
process (each worker of a process pool opens its own).
"""

from __future__ import annotations

import functools
import os
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


def open_image(path: str) -> Image.Image:
    """A PIL image for ``path``; the caller closes it (``with open_image(p) as img``)."""
    if is_h5(path):
        return Image.fromarray(h5_pixels(path))
    return Image.open(path)
