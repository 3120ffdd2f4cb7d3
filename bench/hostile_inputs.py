"""What one hostile input costs the validate step: wall time and peak memory, each case
in a fresh process (issue 22, item 3).

Cases (all on generated 96x96 patches; nothing from the shared data is needed):
  * ``huge-id``: a labels file whose one id is 1 GiB of text;
  * ``rows-2m``: 2,000,000 rows naming the same 50 image files;
  * ``rows-500k``: 500,000 rows (the limit) naming 50 files (under the row limit: every row is judged,
    each file is opened once, and every row after a file's first is quarantined);
  * ``clean-20k``: 20,000 rows, one file each, for scale.

Prints one line per case: outcome, seconds, peak RSS. Before the limits (issue 22's
figures, same machine class): the 1 GiB id peaked at 4.3 GB; 2,000,000 rows took 359 s
and 4.15 GB, each file decoded 40,000 times.

    .venv/bin/python bench/hostile_inputs.py            # every case (a few minutes)
    .venv/bin/python bench/hostile_inputs.py --smoke    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def _images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        Image.fromarray(rng.integers(40, 220, (96, 96, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
        names.append(f"images/f{i}.png")
    return names


def make_case(root: Path, case: str, scale: float) -> None:
    """Write the data root of ``case`` under ``root``."""
    if case == "huge-id":
        _images(root / "images", 50)
        size = int((1 << 30) * scale)
        with open(root / "labels.csv", "w") as f:
            f.write("id,label\n")
            block = "x" * (1 << 20)
            for _ in range(size >> 20):
                f.write(block)
            f.write(",1\n")
        return
    files = {"rows-2m": 50, "rows-500k": 50, "clean-20k": int(20_000 * scale)}[case]
    rows = {"rows-2m": 2_000_000, "rows-500k": 500_000, "clean-20k": files}[case]
    rows = max(files, int(rows * scale))
    names = _images(root / "images", files)
    pd.DataFrame({"id": [f"r{i}" for i in range(rows)], "label": np.arange(rows) % 2,
                  "filename": [names[i % files] for i in range(rows)]}).to_csv(root / "labels.csv", index=False)


def run_case(root: Path) -> dict:
    """In this (fresh) process: manifest + validation of ``root``; what happened."""
    from histo_core.config import ValidationConfig
    from histo_core.data.manifest import build_manifest
    from histo_core.data.sources import DataSourceError
    from histo_core.validation import validate_manifest

    start = time.perf_counter()
    try:
        result = validate_manifest(build_manifest(root, workers=1), ValidationConfig())
        outcome = result.summary()[:160]
    except DataSourceError as exc:
        outcome = "refused: " + str(exc).replace(str(root), "<root>")[:160]
    return {"seconds": time.perf_counter() - start, "outcome": outcome,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1/100 of every size")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case))))
        return
    scale = 0.01 if args.smoke else 1.0
    print(f"{'case':<10} {'seconds':>8} {'peak MiB':>9}  outcome")
    for number, case in enumerate(("huge-id", "rows-2m", "rows-500k", "clean-20k")):
        with tempfile.TemporaryDirectory() as tmp:
            make_case(Path(tmp), case, scale)
            # --smoke: the first case in its own process, to exercise that path; the rest here
            # (their peak memory is then this process's, which the smoke does not report on).
            got = measure_in_child(case, Path(tmp)) if number == 0 or not args.smoke else run_case(Path(tmp))
        print(f"{case:<10} {got['seconds']:8.1f} {got['peak_mib']:9.0f}  {got['outcome']}", flush=True)


def measure_in_child(case: str, root: Path) -> dict:
    """``run_case`` in a fresh process, so that its peak memory is the case's own."""
    child = subprocess.run([sys.executable, __file__, "--case", str(root)], capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"{case}: the measuring process failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
