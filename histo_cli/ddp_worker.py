"""One rank of ``histo train --nproc N``: started by torch.distributed.run, trains a split
that the parent process already validated, split and decoded into the cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from histo_core.config import TrainConfig
from histo_core.layout import ModelDir, SplitDir
from histo_core.steps import load_partitions, record_training
from histo_core.train import fit, format_epoch, training_augmentation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", type=Path, required=True, help="split folder (split.csv inside)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    args = parser.parse_args()
    cfg = TrainConfig.model_validate_json(args.config)
    parts = load_partitions(SplitDir(args.split), args.cache, training_augmentation(cfg))
    # on rank 0 only; img/s is the sum over ranks
    result = fit(parts["train"], parts["val"], cfg, args.out,
                 lambda r: print(format_epoch(r, cfg.epochs), flush=True))
    if os.environ.get("RANK", "0") == "0":  # training.json, as steps.train writes it for one process
        record_training(ModelDir(args.out), result.history, result.device)


if __name__ == "__main__":
    main()
