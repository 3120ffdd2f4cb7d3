"""Train / val / test assignment that never changes as data grows.

Each image's partition is a function of its *pixels* (``pixel_sha256``) and a fixed
salt, so:

* an image keeps its partition forever: the test hold-out stays unseen by every model
  ever trained, and challenger and champion are compared on images neither trained on;
* byte-identical images under different ids land in the same partition (no leakage);
* stratification by label is statistical: the hash is independent of the label, so
  each class is split in the requested fractions up to sampling noise. An exact
  per-class quota would have to move images between partitions as data arrives,
  which would break the first two guarantees.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from histo_core.config import SplitConfig

PARTITIONS = ("train", "val", "test")


class SplitError(ValueError):
    """A partition cannot be used (empty, or missing a class)."""


def hash_fraction(pixel_sha256: str, salt: str) -> float:
    """A number in [0, 1) fixed by the pixels and the salt."""
    digest = hashlib.sha256(f"{salt}:{pixel_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_partitions(rows: pd.DataFrame, cfg: SplitConfig = SplitConfig()) -> pd.DataFrame:
    """Return ``rows`` with a ``partition`` column; raises when a partition lacks a class."""
    hashes = rows["pixel_sha256"].tolist()  # a list: iterating a pandas string column costs 2 us a row
    u = np.fromiter((hash_fraction(h, cfg.salt) for h in hashes), float, count=len(hashes))
    partition = np.where(u < cfg.test_fraction, "test",
                         np.where(u < cfg.test_fraction + cfg.val_fraction, "val", "train"))
    out = rows.assign(partition=partition)
    # Impossible by construction; checked because the hold-out depends on it. Hashing, not
    # groupby's sort of 262k strings, so the check stays linear in the data set.
    leaked = out[["pixel_sha256", "partition"]].drop_duplicates()["pixel_sha256"].duplicated()
    if leaked.any():
        raise SplitError(f"{int(leaked.sum())} identical images fall in more than one partition")
    for name in PARTITIONS:
        labels = set(out.loc[out["partition"] == name, "label"])
        if len(labels) < 2:
            raise SplitError(
                f"the {name} partition has labels {sorted(labels)} only; both 0 and 1 are needed. "
                "Add data or raise the val/test fractions."
            )
    return out


def balanced_weights(labels: pd.Series | np.ndarray) -> np.ndarray:
    """Per-sample weights that draw both classes equally often (1 / class count)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), (1.0 / counts).tolist()))
    return np.array([per_class[label] for label in labels.tolist()])
