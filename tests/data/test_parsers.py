"""The parsers on the real annotation files (../shared/fixtures/real-metadata) and on
fixtures built in each documented layout; the split sizes must be METHOD.md's."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from raml_cli.data.catalog import get_spec
from raml_cli.data.parsers import missing_images, parse_cars, parse_cub, parse_sop
from raml_cli.data.parsers.cars import class_id_of_folder
from raml_cli.data.parsers.cars_names import CARS196_CLASS_NAMES
from raml_cli.errors import DataError

REAL = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "real-metadata"
if not REAL.exists():  # the checkout may live elsewhere than beside shared/
    REAL = Path("/work/shared/fixtures/real-metadata")
needs_real = pytest.mark.skipif(not REAL.exists(), reason="real metadata fixtures not present")


def counts(parsed) -> dict:
    return {split: {"classes": c, "images": n} for split, (c, n) in parsed.counts().items()}


def expected(name: str) -> dict:
    spec = get_spec(name)
    return {split: {"classes": v.classes, "images": v.images}
            for split, v in spec.expected.items()}


@needs_real
def test_cub_real_annotations_give_the_paper_split():
    parsed = parse_cub(REAL / "CUB_200_2011")
    assert counts(parsed) == {"train": {"classes": 100, "images": 5864},
                              "test": {"classes": 100, "images": 5924}}
    assert counts(parsed) == expected("cub200")
    assert {s.label for s in parsed.train} == set(range(1, 101))
    assert {s.label for s in parsed.test} == set(range(101, 201))
    assert parsed.image_root == REAL / "CUB_200_2011" / "images"
    assert parsed.train[0].path == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert parsed.class_names[200] == "200.Common_Yellowthroat"


@needs_real
def test_cub_is_found_one_folder_down(tmp_path):
    shutil.copytree(REAL / "CUB_200_2011", tmp_path / "CUB_200_2011")
    assert counts(parse_cub(tmp_path)) == expected("cub200")


@needs_real
def test_cars_devkit_real_annotations_give_the_paper_split():
    parsed = parse_cars(REAL / "Cars196")
    assert parsed.layout == "devkit"
    assert counts(parsed) == {"train": {"classes": 98, "images": 8054},
                              "test": {"classes": 98, "images": 8131}}
    assert counts(parsed) == expected("cars196")
    assert parsed.train[0].path == "cars_train/00001.jpg"
    assert sum(s.path.startswith("cars_test/") for s in parsed.train + parsed.test) == 8041


@needs_real
@pytest.mark.parametrize("conversion", ["cars_annos.txt", "cars_annos.csv"])
def test_cars_third_party_conversions_give_the_paper_split(tmp_path, conversion):
    shutil.copy(REAL / "Cars196" / "third_party_conversions" / conversion, tmp_path)
    parsed = parse_cars(tmp_path)
    assert parsed.layout == "car_ims"
    assert counts(parsed) == expected("cars196")
    assert parsed.train[0].path == "car_ims/000001.jpg"


@needs_real
def test_cars_annos_mat_layout_matches_the_conversion(tmp_path, make):
    """cars_annos.mat itself could not be obtained: rebuild one with its documented fields
    from the conversion and read it as the real file would be read."""
    rows = (REAL / "Cars196" / "third_party_conversions" / "cars_annos.txt").read_text()
    records = []
    for line in rows.splitlines():
        path, label, test = line.split(",")
        # (the bbox_* fields are left out: writing 16,185 x 7 MATLAB values takes seconds)
        records.append({"relative_im_path": path, "class": int(label), "test": int(test)})
    make.write_mat(tmp_path / "cars_annos.mat", records, list(CARS196_CLASS_NAMES))
    parsed = parse_cars(tmp_path)
    assert parsed.layout == "car_ims"
    assert counts(parsed) == expected("cars196")
    assert parsed.class_names[1] == "AM General Hummer SUV 2000"


@needs_real
def test_cars_devkit_and_conversion_agree_on_the_class_sizes(tmp_path):
    shutil.copy(REAL / "Cars196" / "third_party_conversions" / "cars_annos.txt", tmp_path)
    devkit, conversion = parse_cars(REAL / "Cars196"), parse_cars(tmp_path)
    sizes = [Counter(s.label for s in p.train + p.test) for p in (devkit, conversion)]
    assert sizes[0] == sizes[1]


@needs_real
def test_cars_devkit_without_labelled_test_annotations_says_what_to_fetch(tmp_path):
    shutil.copytree(REAL / "Cars196" / "devkit", tmp_path / "devkit")
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat"):
        parse_cars(tmp_path)


def test_cars_class_folders_map_official_names_and_numbers(tmp_path):
    # Kaggle-style: train/ and test/ with folders named after the classes ('/' -> '-').
    for k, name in enumerate(CARS196_CLASS_NAMES, start=1):
        folder_name = name.replace("/", "-")
        for split in ("train", "test"):
            folder = tmp_path / "car_data" / split / folder_name
            folder.mkdir(parents=True)
            (folder / f"{k:05d}.jpg").write_bytes(b"")
    (tmp_path / "car_data" / "names.csv").write_text("not an image\n")
    parsed = parse_cars(tmp_path)
    assert parsed.layout == "class_folders"
    assert counts(parsed) == {"train": {"classes": 98, "images": 196},
                              "test": {"classes": 98, "images": 196}}
    ram = CARS196_CLASS_NAMES.index("Ram C/V Cargo Van Minivan 2012") + 1
    assert Sample_of(parsed, f"car_data/train/Ram C-V Cargo Van Minivan 2012/{ram:05d}.jpg") == ram
    assert class_id_of_folder("017") == 17
    assert class_id_of_folder("acura rl sedan 2012") == 2


def Sample_of(parsed, path: str) -> int:  # noqa: N802 (reads like a lookup table)
    return {s.path: s.label for s in parsed.train + parsed.test}[path]


def test_cars_unknown_class_folders_are_named(tmp_path):
    (tmp_path / "Tesla Model 3 2020").mkdir()
    (tmp_path / "Tesla Model 3 2020" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="Tesla Model 3 2020"):
        parse_cars(tmp_path)


def test_cars_empty_folder_lists_the_layouts(tmp_path):
    with pytest.raises(DataError, match="car_ims/ with cars_annos.mat"):
        parse_cars(tmp_path)


def write_ebay(folder: Path, train_classes: int, train_images: int, test_classes: int,
               test_images: int) -> None:
    """Ebay_*.txt in the documented format with the given sizes (no image files)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_id, first_class = 0, 1
    for split, classes, images in (("train", train_classes, train_images),
                                   ("test", test_classes, test_images)):
        lines = ["image_id class_id super_class_id path"]
        for k in range(images):
            image_id += 1
            label = first_class + k % classes
            lines.append(f"{image_id} {label} {1 + label % 12} bicycle_final/{label}_{k}.JPG")
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
        first_class += classes


def test_sop_official_sizes_are_recognised(tmp_path):
    write_ebay(tmp_path / "Stanford_Online_Products", 11318, 59551, 11316, 60502)
    parsed = parse_sop(tmp_path)
    assert counts(parsed) == expected("sop")
    assert parsed.image_root == tmp_path / "Stanford_Online_Products"
    assert parsed.train[0].path == "bicycle_final/1_0.JPG"
    assert {s.label for s in parsed.train}.isdisjoint({s.label for s in parsed.test})


def test_sop_small_fixture_in_the_documented_format(tmp_path, make):
    make.write_tree(tmp_path, make.sop_files(train_classes=3, test_classes=2, per_class=2))
    parsed = parse_sop(tmp_path)
    assert counts(parsed) == {"train": {"classes": 3, "images": 6},
                              "test": {"classes": 2, "images": 4}}
    assert missing_images(parsed.image_root, [s.path for s in parsed.train]) == []


def test_sop_without_header_is_a_clear_error(tmp_path):
    write_ebay(tmp_path, 2, 4, 2, 4)
    text = (tmp_path / "Ebay_train.txt").read_text().splitlines()[1:]
    (tmp_path / "Ebay_train.txt").write_text("\n".join(text))
    with pytest.raises(DataError, match=r"Ebay_train.txt, line 1: the header"):
        parse_sop(tmp_path)


def test_sop_classes_shared_by_both_splits_are_refused(tmp_path):
    write_ebay(tmp_path, 2, 4, 2, 4)
    (tmp_path / "Ebay_test.txt").write_text(
        "image_id class_id super_class_id path\n1 1 1 bicycle_final/x.JPG\n")
    with pytest.raises(DataError, match="share 1 class"):
        parse_sop(tmp_path)


def test_cub_malformed_line_names_file_and_line(tmp_path, make):
    make.write_tree(tmp_path, make.cub_files(top=""))
    (tmp_path / "image_class_labels.txt").write_text("1 1\n2 two\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt, line 2"):
        parse_cub(tmp_path)


def test_cub_label_of_unknown_class_is_refused(tmp_path, make):
    make.write_tree(tmp_path, make.cub_files(classes=2, per_class=1, top=""))
    (tmp_path / "image_class_labels.txt").write_text("1 1\n2 7\n")
    with pytest.raises(DataError, match=r"class id\(s\) \[7\]"):
        parse_cub(tmp_path)


def test_missing_images_lists_what_is_absent(tmp_path, make):
    make.write_tree(tmp_path, make.cub_files(classes=2, per_class=2, top=""))
    parsed = parse_cub(tmp_path)
    gone = parsed.test[0].path
    (parsed.image_root / gone).unlink()
    assert missing_images(parsed.image_root, [s.path for s in parsed.train + parsed.test]) == [
        gone]
