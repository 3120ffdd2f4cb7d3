"""Files replaced whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write`` on a hidden temporary sibling of ``path`` and rename it into place:
    a reader sees the old file or the new one, never half of one, and a failed write
    (a full disk) leaves no temporary file behind."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
