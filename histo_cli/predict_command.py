"""``histo predict``: a folder of patches in, a Kaggle submission out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histo_cli.checks import (OK, REJECTED, STORE_ALIASES, check_image_size, require_device, require_dir,
                              require_file)
from histo_cli.options import add_config_file_options, add_config_options, print_config, resolve_config
from histo_cli.progress import ProgressBar
from histo_core.config import PredictConfig


def register(sub: argparse._SubParsersAction) -> None:
    """histo predict"""
    predict = sub.add_parser("predict", help="score patches: id,label (tumour probability) CSV",
                             description="Score a folder of patches with the store's champion, a named --version, "
                                         "or a --checkpoint file. Every field of PredictConfig (shared with the "
                                         "predict deployment) is an option; --config reads the same fields.")
    add_config_file_options(predict)
    add_config_options(predict, PredictConfig, aliases=STORE_ALIASES)
    predict.add_argument("--model", dest="checkpoint", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    predict.add_argument("--name", dest="model_name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    predict.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Score DATA with a checkpoint file, or a version (default: the champion) of a store;
    exit 1 when any image could not be scored (they are listed in OUT.errors.csv)."""
    import tempfile

    config = resolve_config(PredictConfig, args)
    if args.print_config:
        print_config(config)
        return OK
    require_dir(config.data, "data folder")
    if config.checkpoint is not None:
        require_file(Path(config.checkpoint), "checkpoint")
    if config.order is not None:
        require_file(Path(config.order), "sample submission")
    require_device(config.device)
    from histo_core.predict import list_patches, predict_folder, weights_for

    patches = list_patches(config.data)
    check_image_size(patches["path"], config.data)
    bar = ProgressBar("scoring")
    with tempfile.TemporaryDirectory() as tmp:
        weights, which = weights_for(config, tmp)
        print(f"model: {which}")
        try:
            result = predict_folder(weights, config.data, config.out, config.device, config.batch_size,
                                    tta=config.tta, order=config.order, progress=lambda done: bar(done, len(patches)),
                                    adapt=config.adapt_to_data)
        finally:
            bar.close()
    print(f"wrote {result.csv} ({result.scored} rows: id,label)")
    if result.failed:
        print(f"histo: {result.failed} of {result.scored + result.failed} images could not be scored and are not "
              f"in {result.csv.name}; each is listed with its reason in {result.errors_csv}", file=sys.stderr)
        return REJECTED
    return OK
