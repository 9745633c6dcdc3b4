"""The evaluation transform of METHOD.md, and the training transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from raml_cli.data.transforms import eval_resize_size, eval_transform, train_transform
from raml_cli.errors import InputError


def test_eval_resize_is_eight_sevenths_of_the_resolution():
    assert [eval_resize_size(r) for r in (112, 224, 448, 64)] == [128, 256, 512, 73]


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    # A 140 x 70 image: shorter side 70 -> 73 (64 * 8/7), width -> 146; crop the centre 64.
    array = np.zeros((70, 140, 3), dtype=np.uint8)
    array[:, 70:] = 255  # right half white
    out = eval_transform(64, (0.0,) * 3, (1.0,) * 3)(Image.fromarray(array))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert out[:, :, :28].max() < 0.05 and out[:, :, 36:].min() > 0.95  # left dark, right bright
    tall = eval_transform(64, (0.0,) * 3, (1.0,) * 3)(Image.new("RGB", (70, 300), (255, 0, 0)))
    assert tall.shape == (3, 64, 64)


def test_eval_transform_normalises():
    out = eval_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(
        Image.new("RGB", (40, 40), (255, 0, 128)))
    torch.testing.assert_close(out[:, 16, 16], torch.tensor([2.0, -2.0, (128 / 255 - .5) / .25]))


def test_train_transform_is_random_and_seeded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), np.uint8))
    transform = train_transform(48, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(7)
    a = transform(image)
    torch.manual_seed(7)
    b = transform(image)
    c = transform(image)
    assert a.shape == (3, 48, 48)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_arguments():
    with pytest.raises(InputError):
        eval_transform(4, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(InputError):
        train_transform(32, (0.5, 0.5), (0.5,) * 3)
