"""How large a fraction of flipped labels the label audit catches, on the shared real patches.

Trains champions as a retrain does (validate -> split -> train) on the data set's train
partition, one per ``--epochs`` value (3: a trained champion; 1: a young one, like the
nightly one-epoch champion of ``season.py``, which calls nearly every patch 0), then cuts
the validation and test partitions (images no champion trained on) into batches of
``--batch-rows``: ten clean ones, one per flipped fraction, and two clean batches
re-stained as other labs (``stain_shift.py``; they must not be held). Each batch is
audited by ``histo_core.label_audit.audit_batches`` against the clean batches' recorded
audits (a clean batch against the other nine), exactly as a retrain judges a new batch.
Prints one line per batch and ends, per champion, with

    label audit, N-epoch champion: smallest flipped fraction held F; 20% flipped held: yes|no;
    clean batches held: H of 10; stain-shifted clean batches held: S of 2

    .venv/bin/python bench/label_audit.py [--data DIR] [--epochs 3 1] [--batch-rows N]
    .venv/bin/python bench/label_audit.py --smoke     # generated patches, 1 epoch, under a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from histo_core import steps
from histo_core.config import SMOKE_WIDTH, SplitConfig, TrainConfig, ValidationConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from histo_core.label_audit import audit_batches
from histo_core.layout import DatasetDir, ModelDir
from histo_core.predict import score_paths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stain_shift import stain_shifted  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_real"
FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.30)
CLEAN = 10
STAINED = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/label_audit"))
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 1], help="one champion per value")
    parser.add_argument("--batch-rows", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="400 generated patches (80%% val/test), 1 epoch, "
                                                              "16-row batches")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            # 17 batches of 16 need 272 val/test rows: 80% of 400 rather than 30% of 1000 (less to train on).
            data = write_kaggle_layout(Path(tmp) / "data", SyntheticSpec(count=400, seed=9))
            run(data, Path(tmp) / "out", [1], 16, ValidationConfig(label_audit_min_rows=15),
                SplitConfig(val_fraction=0.4, test_fraction=0.4), SMOKE_WIDTH)
    else:
        if not args.data.is_dir():
            raise SystemExit(f"no data at {args.data} (the shared real patches); --smoke runs on generated ones")
        run(args.data, args.out, args.epochs, args.batch_rows, ValidationConfig(), SplitConfig())


def run(data: Path, out: Path, epochs: list[int], batch_rows: int, cfg: ValidationConfig,
        split_config: SplitConfig, width: int = TrainConfig().width) -> None:
    started = time.perf_counter()
    dataset = steps.validate(str(data), DatasetDir(out / "data"), ValidationConfig(), out / "manifests")
    split = steps.split(dataset, split_config)
    rows = steps.read_split(split)
    pool = rows[rows["partition"].isin(["val", "test"])].sample(frac=1.0, random_state=0).reset_index(drop=True)
    table, names, flips = _batches(pool, batch_rows, out / "stained")
    for n in epochs:
        model = steps.train(split, ModelDir(out / f"model-{n}-epochs"), out / "cache",
                            TrainConfig(epochs=n, min_epochs=1, width=width))
        logits, _ = score_paths(model.best, table["path"].tolist(), device="auto")
        print(f"champion: {n} epoch(s) on {int((rows['partition'] == 'train').sum())} patches; {len(table)} "
              f"held-out patches scored ({time.perf_counter() - started:.0f} s so far)", flush=True)
        _audit(table, names, flips, dict(zip(table["path"], logits)), cfg, f"{n}-epoch champion", batch_rows)
    print(f"({time.perf_counter() - started:.0f} s in all)")


def _batches(pool: pd.DataFrame, batch_rows: int, stained_folder: Path) -> tuple[pd.DataFrame, list[str], list[float]]:
    """The audit's batches: clean, flipped, and clean re-stained (images written here)."""
    names = ([f"clean{i}" for i in range(CLEAN)] + [f"flip{f:.0%}" for f in FRACTIONS]
             + [f"stain{i}" for i in range(STAINED)])
    flips = [0.0] * CLEAN + list(FRACTIONS) + [0.0] * STAINED
    if len(pool) < len(names) * batch_rows:
        raise SystemExit(f"{len(pool)} val/test rows, {len(names) * batch_rows} needed: lower --batch-rows")
    rng = np.random.default_rng(0)
    batches = []
    for i, (name, fraction) in enumerate(zip(names, flips)):
        part = pool.iloc[i * batch_rows:(i + 1) * batch_rows].copy()
        labels = part["label"].astype(int).to_numpy().copy()
        flipped = rng.choice(batch_rows, int(round(fraction * batch_rows)), replace=False)
        labels[flipped] = 1 - labels[flipped]
        if name.startswith("stain"):
            part["path"] = _restain(part["path"].tolist(), stained_folder / name, seed=i)
        part["label"], part["batch"], part["labelled"], part["status"] = labels.astype(str), name, True, "ok"
        batches.append(part)
    return pd.concat(batches, ignore_index=True), names, flips


def _restain(paths: list[str], folder: Path, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = stain_shifted(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]), groups=1, seed=seed)
    written = [folder / f"{i:05d}.png" for i in range(len(paths))]
    for image, path in zip(pixels, written):
        Image.fromarray(image).save(path)
    return [str(p) for p in written]


def _audit(table: pd.DataFrame, names: list[str], flips: list[float], by_path: dict[str, float],
           cfg: ValidationConfig, champion: str, batch_rows: int) -> None:
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
        print(f"{name:<8} flipped {fraction:4.0%}  AUC {audit['auc']:.3f}  reference {audit['reference']['auc']:.3f} "
              f"(spread {audit['reference']['spread']:.3f})  drop {audit['drop']:+.3f}  z {audit['z']:5.1f}  "
              f"disagreement at 0.5 {audit['rate']:.3f}  {verdicts[name]['verdict']}"
              + (f" (not audited: {audit['skipped']})" if "skipped" in audit else ""), flush=True)
    caught = [f for n, f in zip(names[CLEAN:], FRACTIONS) if held[n]]
    print(f"label audit, {champion}: " + (f"smallest flipped fraction held {min(caught):.0%}" if caught
                                          else "no flipped batch held")
          + f"; 20% flipped held: {'yes' if held['flip20%'] else 'no'}; clean batches held: "
            f"{sum(held[n] for n in names[:CLEAN])} of {CLEAN}; stain-shifted clean batches held: "
            f"{sum(held[n] for n in names if n.startswith('stain'))} of {STAINED} (batches of {batch_rows})",
          flush=True)


if __name__ == "__main__":
    main()
