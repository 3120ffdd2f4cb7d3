import hashlib

import numpy as np
import pandas as pd
import pytest

from histo_core.config import SplitConfig
from histo_core.split import SplitError, assign_partitions, balanced_weights


def _rows(n, start=0):
    rng = np.random.default_rng(start)
    return pd.DataFrame({
        "id": [f"img{i}" for i in range(start, start + n)],
        "label": rng.integers(0, 2, n),
        "pixel_sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)],
    })


def test_partitions_never_change_as_data_grows():
    first = assign_partitions(_rows(2000))
    grown = assign_partitions(pd.concat([_rows(2000), _rows(3000, start=2000)], ignore_index=True))
    merged = first.merge(grown, on="id", suffixes=("_before", "_after"))
    assert len(merged) == 2000
    assert (merged["partition_before"] == merged["partition_after"]).all()


def test_fractions_hold_within_each_label():
    table = assign_partitions(_rows(20000), SplitConfig(val_fraction=0.1, test_fraction=0.2))
    for _, group in table.groupby("label"):
        shares = group["partition"].value_counts(normalize=True)
        assert abs(shares["test"] - 0.2) < 0.02 and abs(shares["val"] - 0.1) < 0.02


def test_identical_pixels_share_a_partition_under_any_id():
    rows = _rows(500)
    twins = rows.assign(id=rows["id"] + "-copy")
    table = assign_partitions(pd.concat([rows, twins], ignore_index=True))
    by_hash = table.groupby("pixel_sha256")["partition"].nunique()
    assert (by_hash == 1).all()


def test_salt_changes_the_assignment():
    a = assign_partitions(_rows(1000))["partition"]
    b = assign_partitions(_rows(1000), SplitConfig(salt="other"))["partition"]
    assert (a != b).mean() > 0.2


def test_a_partition_without_both_classes_is_an_error():
    with pytest.raises(SplitError, match="partition has labels"):
        assign_partitions(_rows(6))


def test_balanced_weights_give_each_class_equal_mass():
    labels = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(labels)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())


def test_fractions_that_leave_no_training_data_are_refused():
    with pytest.raises(ValueError, match="must stay below 0.9"):
        SplitConfig(val_fraction=0.5, test_fraction=0.45)


def test_a_split_of_an_unchanged_manifest_is_reused_and_a_changed_one_redone(kaggle_root, tmp_path):
    from histo_core import steps
    from histo_core.config import ValidationConfig

    from histo_core.layout import DatasetDir

    dataset = steps.validate(str(kaggle_root), DatasetDir(tmp_path / "dataset"), ValidationConfig())
    first = steps.split(dataset, SplitConfig())
    written = first.csv.stat().st_mtime_ns
    assert steps.split(dataset, SplitConfig()) == first and first.csv.stat().st_mtime_ns == written

    rows = steps.read_manifest(dataset.manifest)
    rows.loc[0, "status"] = "quarantined"  # a manifest with one row fewer to train on
    rows.to_csv(dataset.manifest, index=False)
    again = steps.split(dataset, SplitConfig())
    assert again.csv.stat().st_mtime_ns != written
    assert rows.loc[0, "id"] not in set(pd.read_csv(again.csv, dtype={"id": str})["id"])
