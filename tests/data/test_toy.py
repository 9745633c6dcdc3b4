"""The built-in toy dataset: deterministic, CUB layout, disjoint classes, real JPEGs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raml_cli.data.toy import generate_toy, render_toy_image, toy_classes
from raml_cli.errors import InputError

SMALL = {"num_classes": 6, "images_per_class": 3}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate_toy(tmp_path / "a", seed=3, **SMALL)
    generate_toy(tmp_path / "b", seed=3, **SMALL)
    generate_toy(tmp_path / "c", seed=4, **SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_cub_layout_and_disjoint_classes(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    generate_toy(root, seed=0, **SMALL)
    images = _table(root / "images.txt")
    labels = _table(root / "image_class_labels.txt")
    split = _table(root / "train_test_split.txt")
    classes = _table(root / "classes.txt")
    n = SMALL["num_classes"] * SMALL["images_per_class"]
    assert [int(r[0]) for r in images] == list(range(1, n + 1))
    assert [r[0] for r in labels] == [r[0] for r in images] == [r[0] for r in split]
    assert [int(r[0]) for r in classes] == list(range(1, SMALL["num_classes"] + 1))
    folder_of = {int(cid): folder for cid, folder in classes}
    for (_, relative), (_, class_id) in zip(images, labels, strict=True):
        assert relative.split("/")[0] == folder_of[int(class_id)]
        assert (root / "images" / relative).is_file()
    for cid, folder in classes:
        assert folder.startswith(f"{int(cid):03d}.")
    train_classes = {int(c) for (_, c), (_, s) in zip(labels, split, strict=True) if s == "1"}
    test_classes = {int(c) for (_, c), (_, s) in zip(labels, split, strict=True) if s == "0"}
    assert train_classes == {1, 2, 3} and test_classes == {4, 5, 6}
    # Every class is a distinct attribute combination (no duplicate class under two ids).
    assert len({folder.split(".", 1)[1] for _, folder in classes}) == SMALL["num_classes"]


def test_real_jpegs_of_varied_size(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    generate_toy(root, seed=1, num_classes=4, images_per_class=4, min_side=80, max_side=160)
    sizes = set()
    for path in (root / "images").rglob("*.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 80 <= im.width <= 160 and 80 <= im.height <= 160
            sizes.add(im.size)
    assert len(sizes) > 8  # sizes and aspect ratios vary
    assert len({round(w / h, 2) for w, h in sizes}) > 4


def test_classes_differ_in_fine_detail_not_coarse_look() -> None:
    """Two classes of one colour family look alike once blurred, unlike when sharp."""
    classes = toy_classes(240, seed=0)
    a = next(c for c in classes if c.colour == "slate" and c.stripes == 6)
    b = next(c for c in classes if c.colour == "slate" and c.stripes == 20)

    def draw(toy_class):
        rng = np.random.default_rng(7)  # same pose, background and lighting
        return render_toy_image(toy_class, 160, 160, rng).astype(np.float32)

    def blur(pixels):
        small = Image.fromarray(pixels.astype(np.uint8)).resize((20, 20), Image.BOX)
        return np.asarray(small, dtype=np.float32)

    sharp_a, sharp_b = draw(a), draw(b)
    sharp_diff = np.abs(sharp_a - sharp_b).mean()
    coarse_diff = np.abs(blur(sharp_a) - blur(sharp_b)).mean()
    assert sharp_diff > 3 * coarse_diff


def test_refuses_non_empty_destination_and_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        generate_toy(tmp_path / "toy", **SMALL)
    assert (tmp_path / "toy" / "keep.txt").read_text() == "user data"
    with pytest.raises(InputError, match="classes"):
        generate_toy(tmp_path / "x", num_classes=1000)
    with pytest.raises(InputError, match="2 images"):
        generate_toy(tmp_path / "x", num_classes=4, images_per_class=1)
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "toy"]  # no temporary folder left behind
