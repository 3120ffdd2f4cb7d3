"""How large a fraction of flipped labels the label audit catches, on the shared real patches.

Trains a champion as a retrain does (validate -> split -> train) on the data set's train
partition, then cuts its validation and test partitions (images the champion never trained
on) into batches of ``--batch-rows``: ten clean ones and one per flipped fraction. Each
batch is audited by ``histo_core.label_audit.audit_batches`` against the clean batches'
recorded audits (a clean batch against the other nine), exactly as a retrain judges a new
batch. Prints one line per batch and ends with

    label audit: smallest flipped fraction held F; 20% flipped held: yes|no; clean batches held: H of 10

    .venv/bin/python bench/label_audit.py [--data DIR] [--epochs N] [--batch-rows N]
    .venv/bin/python bench/label_audit.py --smoke     # generated patches, 1 epoch, under a minute
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from histo_core import steps
from histo_core.config import SplitConfig, TrainConfig, ValidationConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.label_audit import audit_batches
from histo_core.layout import DatasetDir, ModelDir
from histo_core.predict import score_paths

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"
FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.30)
CLEAN = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/label_audit"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="1000 generated patches, 1 epoch, 18-row batches")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=1000, seed=9))
            run(data, Path(tmp) / "out", 1, 18, ValidationConfig(label_audit_min_rows=15))
    else:
        if not args.data.is_dir():
            raise SystemExit(f"no data at {args.data} (the shared real patches); --smoke runs on generated ones")
        run(args.data, args.out, args.epochs, args.batch_rows, ValidationConfig())


def run(data: Path, out: Path, epochs: int, batch_rows: int, cfg: ValidationConfig) -> None:
    started = time.perf_counter()
    dataset = steps.validate(str(data), DatasetDir(out / "data"), ValidationConfig(), out / "manifests")
    split = steps.split(dataset, SplitConfig())
    model = steps.train(split, ModelDir(out / "model"), out / "cache", TrainConfig(epochs=epochs, min_epochs=1))
    rows = steps.read_split(split)
    pool = rows[rows["partition"].isin(["val", "test"])].sample(frac=1.0, random_state=0).reset_index(drop=True)
    needed = (CLEAN + len(FRACTIONS)) * batch_rows
    if len(pool) < needed:
        raise SystemExit(f"{len(pool)} val/test rows, {needed} needed: lower --batch-rows")
    logits, _ = score_paths(model.best, pool["path"].head(needed).tolist(), device="auto")
    print(f"champion: {epochs} epoch(s) on {int((rows['partition'] == 'train').sum())} patches; "
          f"{needed} held-out patches scored ({time.perf_counter() - started:.0f} s so far)", flush=True)
    names = [f"clean{i}" for i in range(CLEAN)] + [f"flip{f:.0%}" for f in FRACTIONS]
    flips = [0.0] * CLEAN + list(FRACTIONS)
    rng = np.random.default_rng(0)
    batches = []
    for i, (name, fraction) in enumerate(zip(names, flips)):
        part = pool.iloc[i * batch_rows:(i + 1) * batch_rows].copy()
        labels = part["label"].astype(int).to_numpy().copy()
        flipped = rng.choice(batch_rows, int(round(fraction * batch_rows)), replace=False)
        labels[flipped] = 1 - labels[flipped]
        part["label"], part["batch"], part["labelled"], part["status"] = labels.astype(str), name, True, "ok"
        batches.append(part)
    table = pd.concat(batches, ignore_index=True)
    by_path = dict(zip(pool["path"].head(needed), logits))

    def scorer(paths: list[str]) -> np.ndarray:
        return np.array([by_path[p] for p in paths])

    clean_audits = {}
    for name in names[:CLEAN]:  # each clean batch's own audit, as its verdict would record it
        verdicts = {name: {"batch": name, "verdict": "accepted", "reasons": [], "new": True}}
        audit_batches(verdicts, table, scorer, cfg)
        clean_audits[name] = verdicts[name]["audit"]
    held = {}
    for name, fraction in zip(names, flips):
        verdicts = {b: {"batch": b, "verdict": "accepted", "audit": a, "new": False}
                    for b, a in clean_audits.items() if b != name}
        verdicts[name] = {"batch": name, "verdict": "accepted", "reasons": [], "new": True}
        audit_batches(verdicts, table, scorer, cfg)
        audit = verdicts[name]["audit"]
        held[name] = verdicts[name]["verdict"] == "held"
        print(f"{name:<8} flipped {fraction:4.0%}  disagreement {audit['rate']:.3f}  reference "
              f"{audit['reference']['rate']:.3f}  excess {audit['excess']:+.3f}  z {audit['z']:5.1f}  "
              f"{verdicts[name]['verdict']}", flush=True)
    caught = [f for n, f in zip(names[CLEAN:], FRACTIONS) if held[n]]
    clean_held = sum(held[n] for n in names[:CLEAN])
    print(f"label audit: smallest flipped fraction held {min(caught):.0%}" if caught else
          "label audit: no flipped batch held", end="")
    print(f"; 20% flipped held: {'yes' if held['flip20%'] else 'no'}; clean batches held: {clean_held} of {CLEAN} "
          f"(batches of {batch_rows}; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
