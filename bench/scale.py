"""The data steps at PatchCamelyon's size: does every step stay linear and small in memory?

Builds data sets of 20,000, 80,000 and 262,144 patches (PCam's training split) from the
shared real patches, each copy turned by one of the 8 dihedral views and shifted by one
grey level per round of 8, so that every patch has distinct pixels; in the Kaggle layout
(``train/<id>.tif`` + ``train_labels.csv``) and the PCam HDF5 layout. Then, for each,
runs the steps a retrain runs before training, each in a fresh process:

    validate  manifest (every image opened once) + the GX suite  (steps.validate)
    split     content-hash partitions                            (steps.split)
    cache     decode into the uint8 memory-mapped cache          (data.cache.build_cache)

and runs all three again on the unchanged data. It prints, per layout and size, each
step's seconds, microseconds per image and peak resident memory (the step's process or
its largest worker), the disk used by the data and by the work folder, and the second
run's time as a fraction of the first. Goals (2 cores): time per image at 262k within
1.3x of that at 20k for every step, no step above 4 GiB, a second run <= 0.1 of the first.
The last line is ``scale: per-image time ratio R, peak memory M GiB`` for scripts.

    .venv/bin/python bench/scale.py                    # all sizes, both layouts (~1 h, ~30 GB disk)
    .venv/bin/python bench/scale.py --sizes 20000 262144 --layouts pcam
    .venv/bin/python bench/scale.py --smoke            # seconds: generated patches, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "pcam_real"
STEPS = ("validate", "split", "cache")
PCAM_X, PCAM_Y = "camelyonpatch_level_2_split_train_x.h5", "camelyonpatch_level_2_split_train_y.h5"


# --- the data ------------------------------------------------------------------------

def source_patches(source: Path | None, smoke_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 96, 96, 3) uint8 pixels and (N,) labels of the real patches (or generated ones)."""
    import pandas as pd
    from PIL import Image

    if source is None:
        from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

        source = write_kaggle_layout(smoke_dir / "source", SyntheticSpec(count=100, seed=3))
        table = pd.read_csv(source / "train_labels.csv", dtype={"id": str})
        table["filename"] = "train/" + table["id"] + ".tif"
    else:
        table = pd.read_csv(source / "labels.csv", dtype={"id": str})
    pixels = np.empty((len(table), 96, 96, 3), np.uint8)
    for i, name in enumerate(table["filename"]):
        with Image.open(source / name) as img:
            pixels[i] = np.asarray(img.convert("RGB"))
    return pixels, table["label"].to_numpy(np.uint8)


def patch(pixels: np.ndarray, labels: np.ndarray, i: int) -> tuple[np.ndarray, int]:
    """Copy ``i``: source ``i mod N`` in dihedral view ``(i // N) mod 8``, shifted by ``i // 8N`` grey levels."""
    n = len(pixels)
    k, view = i // n, (i // n) % 8
    image = np.rot90(pixels[i % n], view % 4)
    if view >= 4:
        image = image[:, ::-1]
    if k >= 8:
        image = np.clip(image.astype(np.int16) + k // 8, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), int(labels[i % n])


def write_kaggle(dest: Path, count: int, pixels: np.ndarray, labels: np.ndarray, reuse: Path | None) -> Path:
    """Kaggle layout; files already written for a larger size are hard-linked, not copied."""
    from PIL import Image

    (dest / "train").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"p{i:07d}"
        target = dest / "train" / f"{name}.tif"
        image, label = patch(pixels, labels, i)
        if reuse and (reuse / "train" / f"{name}.tif").exists():
            os.link(reuse / "train" / f"{name}.tif", target)
        else:
            Image.fromarray(image).save(target, format="TIFF")
        rows.append(f"{name},{label}")
    (dest / "train_labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    return dest


def write_pcam(dest: Path, count: int, pixels: np.ndarray, labels: np.ndarray) -> Path:
    """PCam HDF5 layout (uncompressed, as the gunzipped PCam files are), written in blocks."""
    import h5py

    dest.mkdir(parents=True, exist_ok=True)
    with h5py.File(dest / PCAM_X, "w") as fx, h5py.File(dest / PCAM_Y, "w") as fy:
        x = fx.create_dataset("x", (count, 96, 96, 3), np.uint8)
        y = fy.create_dataset("y", (count, 1, 1, 1), np.uint8)
        for start in range(0, count, 4096):
            block = [patch(pixels, labels, i) for i in range(start, min(count, start + 4096))]
            x[start:start + len(block)] = np.stack([b[0] for b in block])
            y[start:start + len(block), 0, 0, 0] = [b[1] for b in block]
    return dest


# --- one step in its own process ------------------------------------------------------

def run_step(step: str, data: str, work: Path) -> dict[str, float]:
    """Run ``step`` here and return its seconds and peak memory (this process or a worker)."""
    from histo_core import steps
    from histo_core.config import SplitConfig, ValidationConfig
    from histo_core.data.cache import build_cache
    from histo_core.layout import DatasetDir

    dataset, split_cfg = DatasetDir(work / "dataset"), SplitConfig()
    start = time.perf_counter()
    if step == "validate":
        steps.validate(data, dataset, ValidationConfig(), work / "manifests")
    elif step == "split":
        steps.split(dataset, split_cfg)
    else:
        build_cache(steps.read_split(steps.split_dir(dataset, split_cfg)), work / "cache")
    seconds = time.perf_counter() - start
    # VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss across exec, so it would include this
    # bench's own memory at the fork. Workers are forked from the step: theirs is right.
    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    peak_kib = max(hwm_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"seconds": seconds, "peak_gib": peak_kib / 2**20}


def measure(step: str, data: Path, work: Path, isolated: bool = True) -> dict[str, float]:
    """``step`` in a fresh process (its own memory peak); ``isolated=False`` runs it here,
    for --smoke, where only that the bench works matters, not its figures."""
    if not isolated:
        return run_step(step, str(data), work)
    done = subprocess.run([sys.executable, __file__, "--step", step, "--data", str(data), "--work", str(work)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step {step} on {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def disk_gib(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 2**30


# --- the bench ------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 262_144])
    parser.add_argument("--layouts", nargs="+", choices=["kaggle", "pcam"], default=["kaggle", "pcam"])
    parser.add_argument("--source", type=Path, default=SHARED, help="folder of labels.csv + images (pcam_real)")
    parser.add_argument("--out", type=Path, help="default: bench-out/scale of the checkout; with --smoke, a "
                                                 "temporary folder (a smoke never touches a real run's results)")
    parser.add_argument("--keep", action="store_true", help="keep the data and work folders afterwards")
    parser.add_argument("--smoke", action="store_true", help="seconds: 100 generated source patches, sizes 100 and "
                                                             "200, steps run in this process (figures not meaningful)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data, args.work)))
        return
    if args.out is None and args.smoke:
        with tempfile.TemporaryDirectory(prefix="histo-scale-smoke-") as tmp:
            args.out = Path(tmp) / "scale"
            run(args)
        return
    args.out = args.out or REPO / "bench-out" / "scale"
    run(args)


def run(args: argparse.Namespace) -> None:
    """Write each layout at each size, time every step on it twice, print the table."""
    sizes = [100, 200] if args.smoke else sorted(args.sizes)
    if not args.smoke and not (args.source / "labels.csv").is_file():
        raise SystemExit(f"no labels.csv in {args.source}: pass --source, or --smoke for generated patches")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    pixels, labels = source_patches(None if args.smoke else args.source, args.out)
    print(f"source: {len(pixels)} patches; sizes {sizes}; layouts {args.layouts}; out {args.out}", flush=True)

    results: dict[tuple[str, int], dict] = {}
    for layout in args.layouts:
        largest = None
        for size in sorted(sizes, reverse=True):  # the largest first: the smaller Kaggle sets link to it
            start = time.perf_counter()
            data = args.out / f"{layout}-{size}"
            if layout == "kaggle":
                write_kaggle(data, size, pixels, labels, largest)
                largest = largest or data
            else:
                write_pcam(data, size, pixels, labels)
            print(f"{layout} {size}: wrote the data in {time.perf_counter() - start:.0f}s", flush=True)
        for size in sizes:
            data, work = args.out / f"{layout}-{size}", args.out / f"work-{layout}-{size}"
            # --smoke: one step in its own process, to exercise that path; the rest here.
            first_of_all = layout == args.layouts[0] and size == sizes[0]
            isolated = {s: not args.smoke or (first_of_all and s == STEPS[0]) for s in STEPS}
            first = {s: measure(s, data, work, isolated[s]) for s in STEPS}
            again = {s: measure(s, data, work, isolated[s] and not args.smoke) for s in STEPS}
            results[layout, size] = {"first": first, "again": again, "data_gib": disk_gib(data),
                                     "work_gib": disk_gib(work)}
            line = "  ".join(f"{s} {r['seconds']:.1f}s {1e6 * r['seconds'] / size:.0f}us/img {r['peak_gib']:.2f}GiB"
                             for s, r in first.items())
            rerun = sum(r["seconds"] for r in again.values()) / sum(r["seconds"] for r in first.values())
            print(f"{layout:>6} {size:>7}: {line}  | again {rerun:.3f} of the first  | data "
                  f"{results[layout, size]['data_gib']:.2f} GiB, work {results[layout, size]['work_gib']:.2f} GiB",
                  flush=True)
            results[layout, size]["again_fraction"] = rerun
            if not args.keep:
                shutil.rmtree(work)
        if not args.keep:
            for size in sizes:
                shutil.rmtree(args.out / f"{layout}-{size}")

    small, big = min(sizes), max(sizes)
    ratios = {(layout, s): (results[layout, big]["first"][s]["seconds"] / big)
              / (results[layout, small]["first"][s]["seconds"] / small) for layout in args.layouts for s in STEPS}
    worst = max(ratios, key=ratios.get)
    peak = max(r["peak_gib"] for v in results.values() for run in ("first", "again") for r in v[run].values())
    rerun = max(v["again_fraction"] for v in results.values())
    print(f"per-image time {big} vs {small}: " + ", ".join(f"{k[0]} {k[1]} {v:.2f}x" for k, v in ratios.items()))
    print(f"slowest-growing step: {worst[0]} {worst[1]}; highest second-run fraction {rerun:.3f}")
    (args.out / "results.json").write_text(json.dumps({f"{k[0]}-{k[1]}": v for k, v in results.items()}, indent=2))
    print(f"scale: per-image time ratio {ratios[worst]:.2f}, peak memory {peak:.2f} GiB")


if __name__ == "__main__":
    main()
