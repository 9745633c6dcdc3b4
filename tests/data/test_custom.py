"""The user's own data: an image folder or a CSV, split by the zero-shot rule or by a column."""

from __future__ import annotations

import os

import pytest

from raml_cli.data.catalog import load_dataset
from raml_cli.data.custom import load_custom, natural_key
from raml_cli.errors import DataError


def images(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8")
    return root


def test_image_folder_classes_in_natural_order_split_zero_shot(tmp_path):
    images(tmp_path, [f"{c}/{k}.jpg" for c in ("cls10", "cls2", "cls1", "cls3")
                      for k in range(2)] + ["cls1/deeper/x.PNG", "cls1/notes.txt",
                                            "cls1/.hidden.jpg", ".cache/y.jpg"])
    splits = load_dataset(str(tmp_path))
    assert splits.extra["class_names"] == {0: "cls1", 1: "cls2", 2: "cls3", 3: "cls10"}
    assert splits.root == tmp_path
    assert {s.label for s in splits.train} == {0, 1}
    assert {s.label for s in splits.test} == {2, 3}
    assert {s.label for s in splits.val} == {1}
    assert "cls1/deeper/x.PNG" in [s.path for s in splits.train]
    assert not any("hidden" in s.path or "notes" in s.path or ".cache" in s.path
                   for s in splits.train + splits.test)


def test_image_folder_with_loose_images_is_refused(tmp_path):
    images(tmp_path, ["a/1.jpg", "b/1.jpg", "stray.jpg"])
    with pytest.raises(DataError, match="outside any class folder.*stray.jpg"):
        load_custom(tmp_path)


def test_image_folder_needs_two_classes(tmp_path):
    images(tmp_path, ["only/1.jpg", "only/2.jpg"])
    with pytest.raises(DataError, match="at least 2 classes"):
        load_custom(tmp_path)


def test_cub_layout_folder_is_read_as_cub(tmp_path, make):
    make.write_tree(tmp_path, make.cub_files(classes=4, per_class=2, top=""))
    splits = load_custom(tmp_path)
    assert splits.extra["source"] == "cub"
    assert splits.root == tmp_path / "images"
    assert {s.label for s in splits.test} == {3, 4}


def test_csv_with_names_and_no_split(tmp_path):
    images(tmp_path, [f"img/{c}{k}.jpg" for c in "abcd" for k in range(2)])
    rows = [f"img/{c}{k}.jpg,{c}" for c in "dcba" for k in range(2)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    splits = load_dataset(str(tmp_path / "data.csv"))
    assert splits.root == tmp_path
    assert splits.extra["class_names"] == {0: "a", 1: "b", 2: "c", 3: "d"}
    assert sorted(s.path for s in splits.test) == ["img/c0.jpg", "img/c1.jpg", "img/d0.jpg",
                                                   "img/d1.jpg"]


def test_csv_header_in_any_order_integer_labels_and_split(tmp_path):
    images(tmp_path, ["1.jpg", "2.jpg", "3.jpg", "4.jpg"])
    absolute = tmp_path / "4.jpg"
    (tmp_path / "d.csv").write_text(
        "split,label,path\ntrain,7,1.jpg\nval,9,2.jpg\ntest,3,3.jpg\n"
        f"TEST,3,{absolute}\n")
    splits = load_custom(tmp_path / "d.csv")
    assert splits.summary() == {"train": {"classes": 2, "images": 2},
                                "val": {"classes": 1, "images": 1},
                                "test": {"classes": 1, "images": 2}}
    assert [s.label for s in splits.train] == [7, 9]
    assert splits.split("fit")[0].path == "1.jpg"
    assert (splits.root / splits.test[1].path) == absolute


def test_csv_without_val_rows_takes_the_second_half_of_training_classes(tmp_path):
    images(tmp_path, [f"{k}.jpg" for k in range(6)])
    rows = [f"{k}.jpg,{k},{'train' if k < 4 else 'test'}" for k in range(6)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    assert {s.label for s in load_custom(tmp_path / "d.csv").val} == {2, 3}


@pytest.mark.parametrize("content, message", [
    ("a.jpg,x,training\n", r"line 1: split 'training' is not one of train, val, test"),
    ("a.jpg,x,train\nb.jpg,y\n", "some rows have a split and some do not"),
    ("a.jpg\n", "line 1: 1 column"),
    ("a.jpg,x,train\nb.jpg,x,val\n", "have both train and val rows"),
    ("a.jpg,\n", "line 1: the label is empty"),
    ("path,label\n", "has a header but no rows"),
    ("", "is empty"),
])
def test_csv_errors_name_the_line_and_the_fix(tmp_path, content, message):
    images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_custom(tmp_path / "d.csv")


def test_missing_images_are_reported_by_path(tmp_path):
    images(tmp_path, ["a.jpg"])
    (tmp_path / "d.csv").write_text("a.jpg,1\nb.jpg,2\nsub/c.jpg,2\n")
    with pytest.raises(DataError) as err:
        load_custom(tmp_path / "d.csv")
    assert "2 of the 3 images" in str(err.value)
    assert str(tmp_path / "b.jpg") in str(err.value)
    assert str(tmp_path / "sub" / "c.jpg") in str(err.value)
    assert load_custom(tmp_path / "d.csv", check_images=False).summary()["test"]["images"] == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_image_is_reported(tmp_path):
    images(tmp_path, ["a/1.jpg", "b/1.jpg"])
    (tmp_path / "b" / "1.jpg").chmod(0)
    with pytest.raises(DataError, match="b/1.jpg"):
        load_custom(tmp_path)


def test_directory_listed_as_an_image_is_reported(tmp_path):
    images(tmp_path, ["a.jpg"])
    (tmp_path / "b.jpg").mkdir()
    (tmp_path / "d.csv").write_text("a.jpg,1\nb.jpg,2\n")
    with pytest.raises(DataError, match="b.jpg"):
        load_custom(tmp_path / "d.csv")


def test_natural_key():
    assert sorted(["a10", "a2", "B1"], key=natural_key) == ["a2", "a10", "B1"]
