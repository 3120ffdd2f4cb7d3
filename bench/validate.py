"""Manifest + validation speed on the shared real data (all 19,185 patches), in one run.

Prints:
  * the PIL decode rate of the same files (a plain loop: open, decode to RGB), img/s;
  * the manifest + GX validation rate (first run, nothing reused), img/s;
  * their ratio (goal >= 0.8);
  * the second run over unchanged files (manifest reused by size and mtime) as a
    fraction of the first (goal <= 0.1), for the manifest alone and with validation.

    .venv/bin/python bench/validate.py [DATA]     # default: ../shared/data/pcam_real
    .venv/bin/python bench/validate.py --smoke    # seconds: 300 generated patches
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from histo_core.data.manifest import build_manifest
from histo_core.data.sources import list_images
from histo_core.validation import validate_manifest

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--smoke", action="store_true", help="seconds: 300 generated patches")
    args = parser.parse_args()
    if args.smoke:
        from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

        with tempfile.TemporaryDirectory() as tmp:
            measure(write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=300, seed=4)))
        return
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}; pass a data root")
    measure(args.data)


def measure(data: Path) -> None:
    paths = list_images(data)["path"].tolist()
    import great_expectations  # noqa: F401  (a one-off import cost, ~3 s, kept out of the rates)

    # Warm the page cache so both measurements read from memory.
    for p in paths:
        Path(p).read_bytes()
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            np.asarray(img.convert("RGB"))
    decode_s = time.perf_counter() - start

    start = time.perf_counter()
    manifest = build_manifest(data)
    manifest_s = time.perf_counter() - start
    result = validate_manifest(manifest)
    first_s = time.perf_counter() - start

    start = time.perf_counter()
    again = build_manifest(data, previous=manifest)
    second_manifest_s = time.perf_counter() - start
    validate_manifest(again)
    second_s = time.perf_counter() - start

    n = len(paths)
    print(f"data: {data} ({n} images, {os.cpu_count()} CPU cores)")
    print(f"PIL decode (1 process):           {n / decode_s:8.0f} img/s  ({decode_s:.2f}s)")
    print(f"manifest + validation, first run: {n / first_s:8.0f} img/s  ({first_s:.2f}s; "
          f"manifest {manifest_s:.2f}s, GX suite {first_s - manifest_s:.2f}s)")
    print(f"ratio to PIL decode:              {decode_s / first_s:8.2f}      [goal >= 0.8]")
    print(f"second run / first, manifest:     {second_manifest_s / manifest_s:8.3f}      [goal <= 0.1] "
          f"({second_manifest_s:.2f}s)")
    print(f"second run / first, with GX:      {second_s / first_s:8.3f}      ({second_s:.2f}s)")
    print(f"verdict: {result.summary()}")


if __name__ == "__main__":
    main()
