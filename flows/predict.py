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
    """Returns the CSV's path; the run fails (after writing it and its summary) when any
    image could not be scored, so the UI shows the run as needing attention."""
    if not config.data:
        raise ValueError("config.data is empty: set the folder (or s3:// prefix) of patches to score")
    with tempfile.TemporaryDirectory() as workdir:
        result = score_patches(config, workdir)
    labels = pd.read_csv(result["csv"])["label"]
    unscored = f" (listed in `{result['errors_csv']}`)" if result["failed"] else ""
    create_markdown_artifact(
        f"## Predictions\n- model: {result['model']}\n- {result['scored']} patches scored, "
        f"{result['failed']} could not be scored{unscored}\n"
        f"- predicted tumour (p >= 0.5): {int((labels >= 0.5).sum())}\n- written to `{result['csv']}`",
        key="predict-summary", description="Batch prediction")
    print(f"wrote {result['csv']}")
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} of {result['scored'] + result['failed']} images could not be "
                           f"scored; each is listed with its reason in {result['errors_csv']}")
    return result["csv"]
