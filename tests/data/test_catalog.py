"""The catalogue: the registry, name-or-path resolution, and full-size verification of the
real CUB annotations with placeholder images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from raml_cli.data.catalog import (
    dataset_names,
    download_command,
    get_spec,
    load_dataset,
    register_dataset,
)
from raml_cli.data.marker import MARKER_NAME, read_marker
from raml_cli.data.prepare import prepare_dataset
from raml_cli.errors import DataError, InputError

REAL_CUB = Path("/work/shared/fixtures/real-metadata/CUB_200_2011")


def test_the_four_datasets_are_registered_with_real_facts():
    assert dataset_names() == ["toy", "cub200", "cars196", "sop"]
    cub = get_spec("cub200").releases[0].files[0]
    assert (cub.name, cub.size, cub.md5) == ("CUB_200_2011.tgz", 1_150_585_339,
                                             "97eceeb196236b17998738112f37df78")
    assert cub.urls[0].startswith("https://data.caltech.edu/records/65de6-vp158/")
    sop = get_spec("sop").releases[0].files[0]
    assert (sop.size, sop.md5) == (3_083_860_082, "7f73d41a2f44250d4779881525aea32e")
    cars = {f.name: f.md5 for r in get_spec("cars196").releases for f in r.files}
    assert cars["car_ims.tgz"] == "d5c8f0aa497503f355e17dc7886c3f14"
    assert cars["cars_annos.mat"] == "b407c6086d669747186bd1d764ff9dbc"
    assert cars["cars_test_annos_withlabels.mat"] == "b0a2b23655a3edd16d84508592a98d10"
    assert get_spec("toy").releases == () and get_spec("toy").generate is not None


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_dataset(get_spec("cub200"))


def test_unknown_name_lists_the_choices():
    with pytest.raises(InputError, match="Did you mean 'cars196'.*toy, cub200, cars196, sop"):
        get_spec("cars")


def test_not_downloaded_names_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"Run `raml download sop` first"):
        load_dataset("sop")
    with pytest.raises(DataError, match=rf"`raml download cub200 --root {tmp_path}`"):
        load_dataset("cub200", tmp_path)
    assert download_command("toy", Path("data"), " --seed 3") == "raml download toy --seed 3"


def test_neither_name_nor_path(tmp_path):
    with pytest.raises(InputError, match="neither a dataset name nor an existing path"):
        load_dataset(str(tmp_path / "nothing-here"))


def test_a_path_that_looks_like_a_name_is_own_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for c in ("a", "b"):
        (tmp_path / "cub" / c).mkdir(parents=True)
        (tmp_path / "cub" / c / "1.jpg").write_bytes(b"")
    assert load_dataset("cub").extra["source"] == "image_folder"


def test_marker_from_another_dataset_is_not_trusted(tmp_path):
    (tmp_path / "cub200").mkdir()
    (tmp_path / "cub200" / MARKER_NAME).write_text(
        '{"format": "raml-dataset", "dataset": "sop", "splits": {}}')
    assert read_marker(tmp_path / "cub200", "cub200") is None
    (tmp_path / "cub200" / MARKER_NAME).write_text("{not json")
    assert read_marker(tmp_path / "cub200", "cub200") is None


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CUB.exists(), reason="real metadata fixtures not present")
def test_real_cub_annotations_with_placeholder_images_verify_at_full_size(tmp_path):
    """The official counts are checked against the real annotation files; images are
    empty placeholders (only their existence is checked)."""
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(REAL_CUB, copy)
    paths = [line.split(maxsplit=1)[1] for line in
             (copy / "images.txt").read_text().splitlines()]
    for folder in {p.split("/")[0] for p in paths}:
        (copy / "images" / folder).mkdir(parents=True)
    for relative in paths:
        (copy / "images" / relative).touch()
    (copy / "images" / paths[-1]).unlink()
    with pytest.raises(DataError, match=r"1 of the 11,788 images .*"
                                        + paths[-1].split("/")[1]):
        prepare_dataset("cub200", tmp_path / "data", archives=[copy])
    (copy / "images" / paths[-1]).touch()
    splits = prepare_dataset("cub200", tmp_path / "data", archives=[copy])
    assert splits.summary() == {"train": {"classes": 100, "images": 5864},
                                "val": {"classes": 50, "images": 2975},
                                "test": {"classes": 100, "images": 5924}}
