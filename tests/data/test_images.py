"""load_rgb on every kind of image a dataset holds, and the dataset that marks bad ones."""

import numpy as np
import pytest
import torch
from PIL import Image

from raml_cli.data.dataset import Sample
from raml_cli.data.images import BadImage, ImageDataset, collate_skipping, load_rgb
from raml_cli.data.transforms import eval_transform
from raml_cli.errors import DataError


def _noise(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def images(tmp_path):
    files = {}
    files["rgb.jpg"] = Image.fromarray(_noise(375, 500))
    files["gray.jpg"] = Image.fromarray(_noise(40, 30, 1), mode="L")
    files["cmyk.jpg"] = Image.new("CMYK", (20, 10), (0, 255, 0, 0))
    files["palette.png"] = Image.fromarray(_noise(20, 20)).convert("P")
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    files["alpha.png"] = rgba
    files["la.png"] = Image.new("LA", (8, 8), (0, 0))
    transparent = Image.new("P", (8, 8), 0)
    transparent.putpalette([10, 20, 30] * 256)
    transparent.info["transparency"] = 0
    files["ptrans.png"] = transparent
    files["gray16.png"] = Image.fromarray(np.full((12, 12), 65535 // 2, dtype=np.uint16))
    for name, image in files.items():
        image.save(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", ["rgb.jpg", "gray.jpg", "cmyk.jpg", "palette.png",
                                  "alpha.png", "la.png", "ptrans.png", "gray16.png"])
def test_every_mode_becomes_8bit_rgb(images, name):
    image = load_rgb(images / name)
    assert image.mode == "RGB"
    assert np.asarray(image).dtype == np.uint8


def test_conversions_keep_the_content(images):
    assert load_rgb(images / "cmyk.jpg").getpixel((5, 5))[1] < 60  # magenta: low green
    alpha = load_rgb(images / "alpha.png")
    assert alpha.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white background
    assert alpha.getpixel((0, 0)) == (0, 0, 255)  # opaque pixel kept
    assert load_rgb(images / "ptrans.png").getpixel((3, 3)) == (255, 255, 255)
    assert load_rgb(images / "gray16.png").getpixel((0, 0)) == (127, 127, 127)  # not clipped


def test_draft_mode_decodes_large_jpegs_smaller_but_large_enough(images):
    full = load_rgb(images / "rgb.jpg")
    assert full.size == (500, 375)
    reduced = load_rgb(images / "rgb.jpg", min_size=128)
    assert reduced.size == (250, 188) and min(reduced.size) >= 128
    assert load_rgb(images / "rgb.jpg", min_size=256).size == (500, 375)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(_noise(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)


def _bad_files(tmp_path):
    Image.fromarray(_noise(200, 200)).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image at all")
    return {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.jpg": "not an image",
            "missing.jpg": "does not exist"}


def test_bad_files_raise_a_data_error_naming_the_path(tmp_path):
    for name, needle in _bad_files(tmp_path).items():
        with pytest.raises(DataError) as info:
            load_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and needle in str(info.value)


def test_dataset_marks_bad_images_when_asked(tmp_path):
    _bad_files(tmp_path)
    samples = [Sample("whole.jpg", 4), Sample("truncated.jpg", 5), Sample("empty.jpg", 6)]
    transform = eval_transform(32, (0.5,) * 3, (0.5,) * 3)
    strict = ImageDataset(tmp_path, samples, transform)
    image, label, index = strict[0]
    assert image.shape == (3, 32, 32) and label == 4 and index == 0
    with pytest.raises(DataError, match="truncated.jpg"):
        strict[1]
    lenient = ImageDataset(tmp_path, samples, transform, skip_bad=True)
    assert strict.min_size == lenient.min_size == 37
    batch = collate_skipping([lenient[i] for i in range(3)])
    assert batch.images.shape == (1, 3, 32, 32)
    assert batch.labels.tolist() == [4] and batch.indices.tolist() == [0]
    assert [i for i, _ in batch.bad] == [1, 2]
    assert all(isinstance(bad, BadImage) and bad.path in bad.reason for _, bad in batch.bad)
    only_bad = collate_skipping([lenient[1]])
    assert only_bad.images is None and only_bad.labels.dtype == torch.int64
