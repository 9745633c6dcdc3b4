"""Tiny real inputs for extraction tests: JPEG/PNG files in class folders and a model file."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raml_cli.data.dataset import Sample
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network


def make_images(root: Path, classes=("001.crow", "002.gull"), per_class=4, seed=0) -> list[Sample]:
    """Noise images of varied sizes and modes; labels from the folder's leading integer."""
    rng = np.random.default_rng(seed)
    samples = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            suffix = "png" if i % 3 == 2 else "jpg"
            image = Image.fromarray(array)
            if i % 4 == 3:
                image = image.convert("L")
            image.save(root / name / f"img{i}.{suffix}")
            samples.append(Sample(f"{name}/img{i}.{suffix}", c + 1))
    return samples


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    network = build_network(NetworkConfig("resnet10t", whitening=16))
    path = tmp_path_factory.mktemp("models") / "teacher.safetensors"
    return save_model(path, network, resolution=48, role="teacher", dataset="toy",
                      config={"res": 48})


@pytest.fixture
def image_dir(tmp_path) -> tuple[Path, list[Sample]]:
    root = tmp_path / "images"
    return root, make_images(root)
