"""Score a folder or prefix of patches with the champion; write a Kaggle-style CSV."""

from __future__ import annotations

import tempfile

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from histo_core.config import PredictConfig
from histo_tasks.operations import score_patches


@flow(name="predict", log_prints=True)
def predict(config: PredictConfig) -> str:
    if not config.data:
        raise ValueError("config.data is empty: set the folder (or s3:// prefix) of patches to score")
    with tempfile.TemporaryDirectory() as workdir:
        out = score_patches(config, workdir)
    table = pd.read_csv(out)
    scored = table["label"].notna()
    create_markdown_artifact(
        f"## Predictions\n- {int(scored.sum())} patches scored, {int((~scored).sum())} unreadable\n"
        f"- predicted tumour (p >= 0.5): {int((table['label'] >= 0.5).sum())}\n- written to `{out}`",
        key="predict-summary", description="Batch prediction with the champion")
    print(f"wrote {out}")
    return out
