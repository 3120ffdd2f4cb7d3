"""One rank of ``histo train --nproc N``: started by torch.distributed.run, trains a split
that the parent process already validated, split and decoded into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from histo_core.config import TrainConfig
from histo_core.steps import load_partitions
from histo_core.train import fit, training_augmentation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    args = parser.parse_args()
    cfg = TrainConfig.model_validate_json(args.config)
    parts = load_partitions(args.split, args.cache, training_augmentation(cfg))

    def report(r: dict) -> None:  # called on rank 0 only
        print(f"epoch {r['epoch']}/{cfg.epochs}  train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}  "
              f"val AUC {r['val_auc']:.4f}  {r['images_per_s']:.0f} img/s (all ranks)"
              + ("  (best, saved)" if r["improved"] else ""), flush=True)

    fit(parts["train"], parts["val"], cfg, args.out, report)


if __name__ == "__main__":
    main()
