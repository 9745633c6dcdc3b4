"""raml embed --scales: scale 1 is today's output exactly; several scales are the average."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.data.images import load_rgb
from raml_cli.data.transforms import eval_transform
from raml_cli.embed import embed_dataset
from raml_cli.errors import InputError
from raml_cli.model.files import load_model
from raml_cli.store import is_current, read_attributes, read_embeddings


def _embed(model_file, image_dir, out, **kw):
    root, samples = image_dir
    return embed_dataset(model_file, out, samples, root, dataset="toy", split="test",
                         device="cpu", workers=0, batch_size=4, **kw)


def test_scale_1_equals_the_single_scale_file(model_file, image_dir, tmp_path):
    _embed(model_file, image_dir, tmp_path / "a.h5")
    _embed(model_file, image_dir, tmp_path / "b.h5", scales=[1.0])
    a, b = read_embeddings(tmp_path / "a.h5"), read_embeddings(tmp_path / "b.h5")
    assert np.array_equal(a.embeddings, b.embeddings)
    assert json.loads(read_attributes(tmp_path / "b.h5")["scales"]) == [1.0]


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_several_scales_are_the_normalised_average(model_file, image_dir, tmp_path, power):
    root, samples = image_dir
    _embed(model_file, image_dir, tmp_path / "ms.h5", scales=[1, 0.5], scale_power=power)
    stored = read_embeddings(tmp_path / "ms.h5")
    attrs = read_attributes(tmp_path / "ms.h5")
    assert json.loads(attrs["scales"]) == [1.0, 0.5] and attrs["scale_power"] == power
    network, info = load_model(model_file)
    transform = eval_transform(48, info.mean, info.std)
    x = torch.stack([transform(load_rgb(root / s.path)) for s in samples[:4]])
    with torch.no_grad():
        full = network(x)
        half = network(F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False,
                                     antialias=True))
    signed = lambda v, p: v.sign() * v.abs() ** p  # noqa: E731
    mean = signed((signed(full, power) + signed(half, power)) / 2, 1 / power)
    expected = (mean / mean.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(stored.embeddings[:4], expected, atol=1e-5)
    assert not np.allclose(stored.embeddings[:4], full.numpy(), atol=1e-3)
    paths = [s.path for s in samples]
    sha = attrs["model_sha256"]
    assert is_current(tmp_path / "ms.h5", model_sha256=sha, resolution=48, paths=paths,
                      scales=[1, 0.5])
    assert not is_current(tmp_path / "ms.h5", model_sha256=sha, resolution=48, paths=paths)


def test_bad_scales_are_refused(model_file, image_dir, tmp_path):
    with pytest.raises(InputError, match="below the smallest input"):
        _embed(model_file, image_dir, tmp_path / "x.h5", scales=[1, 0.1])
    with pytest.raises(InputError, match="in \\(0, 4\\]"):
        _embed(model_file, image_dir, tmp_path / "x.h5", scales=[0])
    result = CliRunner().invoke(app, ["embed", str(model_file), "--images",
                                      str(image_dir[0]), "-o", str(tmp_path / "x.h5"),
                                      "--scales", "1,half", "--device", "cpu"])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output
