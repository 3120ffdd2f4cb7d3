import pandas as pd
import pytest
from PIL import Image

from histo_core.data.sources import DataSourceError, list_images


def _image(path, colour=(200, 100, 150)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), colour).save(path)


def test_kaggle_layout(kaggle_root):
    table = list_images(kaggle_root)
    assert len(table) == 300
    assert table["path"].map(lambda p: p.endswith(".tif")).all()
    assert (table["batch"] == "").all()


def test_labels_csv_with_bom_crlf_and_padding(tmp_path):
    for name in ("a", "b"):
        _image(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels.csv").write_bytes("\ufeffid , label\r\n a ,1\r\nb, 0 \r\n".encode("utf-8"))
    table = list_images(tmp_path)
    assert table[["id", "label"]].values.tolist() == [["a", "1"], ["b", "0"]]
    assert table["path"].str.endswith(".png").all()


def test_class_folders(tmp_path):
    _image(tmp_path / "0" / "neg.jpg")
    _image(tmp_path / "1" / "pos.tif")
    table = list_images(tmp_path)
    assert sorted(zip(table["id"], table["label"])) == [("neg", "0"), ("pos", "1")]


def test_batches_are_the_union_and_rows_remember_their_batch(tmp_path):
    _image(tmp_path / "batches" / "b1" / "0" / "x.png")
    _image(tmp_path / "batches" / "b1" / "1" / "y.png")
    _image(tmp_path / "batches" / "b2" / "images" / "z.png")
    (tmp_path / "batches" / "b2" / "labels.csv").write_text("id,label\nz,1\n")
    table = list_images(tmp_path)
    assert dict(zip(table["id"], table["batch"])) == {"x": "b1", "y": "b1", "z": "b2"}


def test_ids_that_could_escape_the_root_get_no_path(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_labels.csv").write_text("id,label\n../../etc/passwd,1\nok,0\n/abs,0\n")
    table = list_images(tmp_path).set_index("id")
    assert table.loc["../../etc/passwd", "path"] == ""
    assert table.loc["/abs", "path"] == ""
    assert table.loc["ok", "path"].endswith("train/ok.tif")


def test_filename_column_pointing_outside_the_root_gets_no_path(tmp_path):
    (tmp_path / "labels.csv").write_text("id,label,filename\na,1,../outside.png\n")
    assert list_images(tmp_path)["path"].tolist() == [""]


def test_unknown_layout_and_missing_columns_are_explained(tmp_path):
    with pytest.raises(DataSourceError, match="no supported layout.*Kaggle"):
        list_images(tmp_path)
    (tmp_path / "labels.csv").write_text("image,class\na,1\n")
    with pytest.raises(DataSourceError, match=r"missing column\(s\) \['id', 'label'\]"):
        list_images(tmp_path)


def test_shared_real_pcam_folder_loads_as_is(pcam_real):
    table = list_images(pcam_real)
    expected = pd.read_csv(pcam_real / "labels.csv", dtype=str)
    assert len(table) == len(expected) == 19185
    assert table["label"].tolist() == expected["label"].tolist()
    assert table["path"].map(lambda p: p != "").all()


@pytest.mark.parametrize("content, message", [
    ("id,label\ncaf\xe9,1\n".encode("latin-1"), r"labels.csv: not UTF-8 text \(byte 0xe9 at offset 12\)"),
    (b"", r"labels.csv: not a readable CSV"),
    (b'id,label\n"a,1\n', r"labels.csv: not a readable CSV"),
])
def test_an_unreadable_labels_file_is_named_with_the_reason(tmp_path, content, message):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(DataSourceError, match=message):
        list_images(tmp_path)
