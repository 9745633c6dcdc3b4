"""prepare_dataset end to end: real layouts served over local HTTP, --archive files and
folders, the verification marker, idempotence, and nothing half-done after a failure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from raml_cli.data import catalog
from raml_cli.data.catalog import load_dataset
from raml_cli.data.marker import MARKER_NAME
from raml_cli.data.parsers.cars_names import CARS196_CLASS_NAMES
from raml_cli.data.prepare import prepare_dataset
from raml_cli.errors import DataError, DownloadError, InputError

CUB_SMALL = {"train": (2, 6), "test": (2, 6)}


def leftovers(root: Path) -> list[str]:
    """Names in ROOT besides finished datasets: staging folders, downloads, trash."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_cub_download_extract_verify_and_load(tmp_path, server, local_spec, make):
    archive = make.tar(make.cub_files())
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]], CUB_SMALL)
    splits = prepare_dataset("cub200", tmp_path)
    assert splits.summary() == {"train": {"classes": 2, "images": 6},
                                "val": {"classes": 1, "images": 3},
                                "test": {"classes": 2, "images": 6}}
    assert splits.root == tmp_path / "cub200" / "CUB_200_2011" / "images"
    assert (splits.root / splits.train[0].path).is_file()
    marker = json.loads((tmp_path / "cub200" / MARKER_NAME).read_text())
    assert marker["checksums"] == "md5 verified" and marker["splits"] == splits.summary()
    assert leftovers(tmp_path) == []  # the archive is deleted once the dataset is verified
    assert load_dataset("cub200", tmp_path).summary() == splits.summary()
    # Idempotent: a second run neither downloads nor extracts.
    requests = len(server.requests)
    assert prepare_dataset("cub200", tmp_path).summary() == splits.summary()
    assert len(server.requests) == requests


def test_interrupted_download_resumes_in_a_later_run(tmp_path, server, local_spec, make,
                                                     monkeypatch):
    monkeypatch.setattr("raml_cli.data.download.RETRY_BACKOFF_S", 0.0)
    archive = make.tar({k: v + os.urandom(30_000) if k.endswith(".jpg") else v
                        for k, v in make.cub_files().items()})
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]], CUB_SMALL)
    server.drops["r0/CUB_200_2011.tgz"] = [len(archive) // 2] + [0] * 10
    with pytest.raises(DownloadError, match="running again resumes"):
        prepare_dataset("cub200", tmp_path)
    assert not (tmp_path / "cub200").exists()
    part = tmp_path / ".downloads" / "CUB_200_2011.tgz.part"
    assert part.stat().st_size == len(archive) // 2
    server.drops.clear()
    prepare_dataset("cub200", tmp_path)
    assert server.requests[-1] == ("r0/CUB_200_2011.tgz", f"bytes={len(archive) // 2}-")
    assert load_dataset("cub200", tmp_path).summary()["test"] == {"classes": 2, "images": 6}


def test_wrong_counts_fail_verification_and_leave_nothing(tmp_path, server, local_spec, make):
    archive = make.tar(make.cub_files())
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]],
               {"train": (100, 5864), "test": (100, 5924)})
    with pytest.raises(DataError, match=r"train split has 6 images of 2 classes, the "
                                        r"official one 5,864 of 100"):
        prepare_dataset("cub200", tmp_path)
    assert not (tmp_path / "cub200").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".downloads"]  # kept: not the fault


def test_missing_image_in_archive_is_named(tmp_path, server, local_spec, make):
    files = make.cub_files()
    gone = next(name for name in files if name.endswith(".jpg"))
    del files[gone]
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", make.tar(files))]], CUB_SMALL)
    with pytest.raises(DataError, match=Path(gone).name):
        prepare_dataset("cub200", tmp_path)
    assert not (tmp_path / "cub200").exists()


def test_malicious_archive_leaves_nothing_behind(tmp_path, server, local_spec, make):
    files = make.cub_files()
    files["../../escaped.txt"] = b"x"
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", make.tar(files))]], CUB_SMALL)
    with pytest.raises(DataError, match="Refusing to extract"):
        prepare_dataset("cub200", tmp_path / "root")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "root" / "cub200").exists()
    assert leftovers(tmp_path / "root") == [".downloads"]


def test_mirrors_replace_the_catalogue_urls(tmp_path, server, local_spec, make, dead_url):
    local_spec("cub200", [[("CUB_200_2011.tgz", [dead_url], None)]], CUB_SMALL)
    server.files["mirror/CUB_200_2011.tgz"] = make.tar(make.cub_files())
    splits = prepare_dataset("cub200", tmp_path, mirrors={
        "CUB_200_2011.tgz": [server.url("mirror/CUB_200_2011.tgz")]})
    assert splits.summary()["train"]["images"] == 6
    assert server.paths_requested() == ["mirror/CUB_200_2011.tgz"]


def test_sop_zip_download(tmp_path, server, local_spec, make):
    archive = make.zip(make.sop_files(train_classes=3, test_classes=2, per_class=2))
    local_spec("sop", [[make.LocalRelease("Stanford_Online_Products.zip", archive)]],
               {"train": (3, 6), "test": (2, 4)})
    splits = prepare_dataset("sop", tmp_path)
    assert splits.summary()["val"] == {"classes": 2, "images": 4}
    assert splits.root == tmp_path / "sop" / "Stanford_Online_Products"


def cars_records(ids: list[int], per_class: int = 2) -> list[tuple[str, int]]:
    return [(f"{k * 10 + i:06d}.jpg", k) for k in ids for i in range(per_class)]


def test_cars_falls_back_from_dead_car_ims_to_the_devkit(tmp_path, server, local_spec, make,
                                                         dead_url):
    train = cars_records([1, 2, 150])
    test = cars_records([2, 151])
    box = {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 9, "bbox_y2": 9}
    (tmp_path / "src").mkdir()
    make.write_mat(tmp_path / "src" / "train.mat",
                   [{**box, "class": k, "fname": f} for f, k in train])
    make.write_mat(tmp_path / "src" / "test.mat",
                   [{**box, "class": k, "fname": f} for f, k in test])
    devkit = make.tar({"devkit/cars_train_annos.mat": (tmp_path / "src/train.mat").read_bytes(),
                       "devkit/README.txt": b"devkit"})
    local_spec("cars196", [
        [("car_ims.tgz", [dead_url], "d5c8f0aa497503f355e17dc7886c3f14"),
         ("cars_annos.mat", [dead_url], "b407c6086d669747186bd1d764ff9dbc")],
        [make.LocalRelease("cars_train.tgz",
                           make.tar({f"cars_train/{f}": b"" for f, _ in train})),
         make.LocalRelease("cars_test.tgz", make.tar({f"cars_test/{f}": b"" for f, _ in test})),
         make.LocalRelease("car_devkit.tgz", devkit),
         make.LocalRelease("cars_test_annos_withlabels.mat",
                           (tmp_path / "src/test.mat").read_bytes())],
    ], {"train": (2, 6), "test": (2, 4)})
    splits = prepare_dataset("cars196", tmp_path / "data")
    assert splits.extra["layout"] == "devkit"
    assert {s.label for s in splits.train} == {1, 2}
    assert {s.label for s in splits.test} == {150, 151}
    assert splits.extra["class_names"][150] == CARS196_CLASS_NAMES[149]


def test_cars_with_no_url_answering_says_what_to_fetch(tmp_path, local_spec, dead_url):
    local_spec("cars196", [  # the real manual hint is kept
        [("car_ims.tgz", [dead_url], "d5c8f0aa497503f355e17dc7886c3f14"),
         ("cars_annos.mat", [dead_url], "b407c6086d669747186bd1d764ff9dbc")],
        [("cars_train.tgz", [dead_url], None), ("cars_test.tgz", [dead_url], None),
         ("car_devkit.tgz", [dead_url], None),
         ("cars_test_annos_withlabels.mat", [dead_url], None)],
    ], None)
    with pytest.raises(DownloadError) as err:
        prepare_dataset("cars196", tmp_path / "data")
    message = str(err.value)
    assert "car_ims.tgz (md5 d5c8f0aa497503f355e17dc7886c3f14)" in message
    assert ("`raml download cars196 --root " + str(tmp_path / "data")
            + " --archive car_ims.tgz --archive cars_annos.mat`") in message
    assert "--archive cars_train.tgz --archive cars_test.tgz --archive car_devkit.tgz " \
           "--archive cars_test_annos_withlabels.mat" in message
    assert "one-folder-per-class mirror" in message
    assert not (tmp_path / "data" / "cars196").exists()


def test_archive_files_are_md5_checked_and_ingested(tmp_path, local_spec, make):
    archive = make.tar(make.cub_files())
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]], CUB_SMALL,
               serve=False)
    mine = tmp_path / "CUB_200_2011.tgz"
    mine.write_bytes(archive)
    splits = prepare_dataset("cub200", tmp_path / "data", archives=[mine])
    assert splits.summary()["train"]["images"] == 6
    assert mine.exists()  # the user's file is never deleted


def test_repacked_archive_needs_no_verify(tmp_path, local_spec, make):
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", b"official bytes")]],
               CUB_SMALL, serve=False)
    mine = tmp_path / "CUB_200_2011.tgz"
    mine.write_bytes(make.tar(make.cub_files()))
    with pytest.raises(DataError, match="--no-verify"):
        prepare_dataset("cub200", tmp_path / "data", archives=[mine])
    assert not (tmp_path / "data" / "cub200").exists()
    renamed = tmp_path / "cub-repack.tar.gz"
    shutil.copy(mine, renamed)
    with pytest.raises(DataError, match="not a file of cub200's releases"):
        prepare_dataset("cub200", tmp_path / "data", archives=[renamed])
    splits = prepare_dataset("cub200", tmp_path / "data", archives=[renamed], verify=False)
    marker = json.loads((tmp_path / "data" / "cub200" / MARKER_NAME).read_text())
    assert marker["checksums"] == "not checked (--no-verify)"
    assert splits.summary()["test"]["images"] == 6


def test_truncated_archive_given_by_hand(tmp_path, local_spec, make):
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", b"")]], CUB_SMALL, serve=False)
    data = make.tar({k: v + os.urandom(5000) for k, v in make.cub_files().items()})
    cut = tmp_path / "CUB_200_2011.tgz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepare_dataset("cub200", tmp_path / "data", archives=[cut], verify=False)
    assert not (tmp_path / "data" / "cub200").exists()
    assert leftovers(tmp_path / "data") == []


def test_incomplete_release_is_named(tmp_path, local_spec, make):
    mine = tmp_path / "cars_train.tgz"
    mine.write_bytes(b"x")
    with pytest.raises(DataError, match="not a complete release of cars196"):
        prepare_dataset("cars196", tmp_path / "data", archives=[mine])


def test_extracted_folder_is_verified_in_place(tmp_path, local_spec, make):
    local_spec("cub200", [], CUB_SMALL)
    mine = make.write_tree(tmp_path / "mine", make.cub_files())
    splits = prepare_dataset("cub200", tmp_path / "data", archives=[mine])
    assert splits.root == (mine / "CUB_200_2011" / "images").resolve()
    assert sorted(os.listdir(tmp_path / "data" / "cub200")) == [MARKER_NAME]  # not copied
    assert load_dataset("cub200", tmp_path / "data").root == splits.root


def test_folder_already_in_place_gets_verified_without_moving(tmp_path, local_spec, make):
    local_spec("cub200", [], CUB_SMALL)
    target = make.write_tree(tmp_path / "data" / "cub200", make.cub_files())
    with pytest.raises(DataError, match="--archive " + str(target)):
        prepare_dataset("cub200", tmp_path / "data")  # not ours: never replaced
    prepare_dataset("cub200", tmp_path / "data", archives=[target])
    marker = json.loads((target / MARKER_NAME).read_text())
    assert marker["data_dir"] == "."
    assert (target / "CUB_200_2011" / "images.txt").exists()
    assert load_dataset("cub200", tmp_path / "data").summary()["train"]["images"] == 6


def test_changed_dataset_is_refused_on_load_and_refetched(tmp_path, server, local_spec, make):
    archive = make.tar(make.cub_files())
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]], CUB_SMALL)
    prepare_dataset("cub200", tmp_path)
    labels = tmp_path / "cub200" / "CUB_200_2011" / "images.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="changed since it was verified.*raml download cub200"):
        load_dataset("cub200", tmp_path)
    prepare_dataset("cub200", tmp_path)  # repairs it
    assert load_dataset("cub200", tmp_path).summary()["test"]["images"] == 6
    assert leftovers(tmp_path) == []


def fake_toy(dest: Path, seed: int, reporter) -> None:
    """A tiny stand-in generator: CUB layout, classes 1..4, the size depends on the seed."""
    for name, data in _cub_tree(per_class=2 + seed % 2).items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _cub_tree(per_class: int) -> dict[str, bytes]:
    images, labels, files = [], [], {}
    for c in range(1, 5):
        for k in range(per_class):
            i = len(images) + 1
            files[f"images/{c:03d}.c{c}/{k}.jpg"] = b"\xff\xd8"
            images.append(f"{i} {c:03d}.c{c}/{k}.jpg")
            labels.append(f"{i} {c}")
    files["images.txt"] = "\n".join(images).encode()
    files["image_class_labels.txt"] = "\n".join(labels).encode()
    files["classes.txt"] = "".join(f"{c} {c:03d}.c{c}\n" for c in range(1, 5)).encode()
    return files


def test_concurrent_run_is_refused_and_killed_runs_are_cleaned(tmp_path, server, local_spec,
                                                              make):
    import fcntl

    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", make.tar(make.cub_files()))]],
               CUB_SMALL)
    (tmp_path / ".cub200.staging-deadbeef" / "CUB_200_2011").mkdir(parents=True)
    with open(tmp_path / ".cub200.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="Another `raml download cub200` is working"):
            prepare_dataset("cub200", tmp_path)
        fcntl.flock(held, fcntl.LOCK_UN)
    prepare_dataset("cub200", tmp_path)
    assert leftovers(tmp_path) == []


def test_generated_dataset_follows_the_seed(tmp_path, monkeypatch):
    import dataclasses

    spec = dataclasses.replace(catalog.DATASETS["toy"], generate=fake_toy)
    monkeypatch.setitem(catalog.DATASETS, "toy", spec)
    assert prepare_dataset("toy", tmp_path, seed=0).summary()["train"]["images"] == 4
    assert prepare_dataset("toy", tmp_path, seed=0).summary()["train"]["images"] == 4
    assert prepare_dataset("toy", tmp_path, seed=1).summary()["train"]["images"] == 6
    marker = json.loads((tmp_path / "toy" / MARKER_NAME).read_text())
    assert marker["seed"] == 1
    assert leftovers(tmp_path) == []
    with pytest.raises(InputError, match="generated locally"):
        prepare_dataset("toy", tmp_path, archives=[tmp_path])


def test_generator_listing_images_it_did_not_write_is_caught(tmp_path, monkeypatch):
    import dataclasses

    def broken(dest: Path, seed: int, reporter) -> None:
        fake_toy(dest, seed, reporter)
        (dest / "images" / "001.c1" / "stray.jpg").write_bytes(b"")

    spec = dataclasses.replace(catalog.DATASETS["toy"], generate=broken)
    monkeypatch.setitem(catalog.DATASETS, "toy", spec)
    with pytest.raises(DataError, match="lists 8 images but wrote 9"):
        prepare_dataset("toy", tmp_path)
    assert not (tmp_path / "toy").exists()
