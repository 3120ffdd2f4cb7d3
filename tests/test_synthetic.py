import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from histo_core.data.synthetic import SyntheticSpec, generate_labels, render_patch, write_kaggle_layout


def test_patches_are_deterministic_and_independent_of_count():
    small, large = generate_labels(SyntheticSpec(count=10, seed=3)), generate_labels(SyntheticSpec(count=50, seed=3))
    pd.testing.assert_frame_equal(small, large.head(10))
    assert np.array_equal(render_patch(3, 4, 1), render_patch(3, 4, 1))
    assert not np.array_equal(render_patch(3, 4, 1), render_patch(4, 4, 1))


def test_kaggle_layout_is_written_and_never_overwritten(tmp_path):
    root = write_kaggle_layout(tmp_path, SyntheticSpec(count=12, seed=1))
    labels = pd.read_csv(root / "train_labels.csv")
    assert list(labels.columns) == ["id", "label"]
    assert set(labels["label"]) <= {0, 1}
    for image_id in labels["id"]:
        with Image.open(root / "train" / f"{image_id}.tif") as img:
            assert (img.size, img.mode) == ((96, 96), "RGB")
    with pytest.raises(FileExistsError, match="already exists"):
        write_kaggle_layout(tmp_path, SyntheticSpec(count=12, seed=2))


def test_label_noise_flips_about_the_requested_fraction():
    table = generate_labels(SyntheticSpec(count=5000, seed=0, label_noise=0.05))
    assert 0.04 < (table["label"] != table["true_label"]).mean() < 0.06


def test_tumour_patches_have_more_dark_nuclei_in_the_centre():
    def centre_dark_fraction(label):
        patches = np.stack([render_patch(0, i, label) for i in range(60)])
        return (patches[:, 32:64, 32:64].mean(axis=3) < 110).mean()

    assert centre_dark_fraction(1) > 2 * centre_dark_fraction(0)


def test_mean_colour_alone_does_not_separate_the_classes():
    table = generate_labels(SyntheticSpec(count=400, seed=11, label_noise=0.0))
    means = np.stack([render_patch(11, i, int(t)).reshape(-1, 3).mean(axis=0)
                      for i, t in enumerate(table["true_label"])])
    y = table["true_label"].to_numpy()
    for feature in [means.mean(axis=1), means[:, 0], means[:, 1], means[:, 2]]:
        x = feature[:, None]
        auc = roc_auc_score(y, LogisticRegression().fit(x, y).predict_proba(x)[:, 1])
        assert auc <= 0.75, f"one mean-colour feature reaches AUC {auc:.3f}"
