"""Shared by the distillation engine and command-line tests: one tiny teacher for both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raml_cli.data.toy import generate_toy
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network

#: The teacher_file fixture's resolution (test_distill.py and test_cli_distill.py rely on it).
R = 32


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight teacher at R whose dataset is a tiny toy (read as CUB by path)."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "toy"
    generate_toy(data, seed=0, num_classes=8, images_per_class=4, min_side=40, max_side=60)
    torch.manual_seed(0)
    network = build_network(NetworkConfig("test_resnet", whitening=16))
    return save_model(root / "teacher.safetensors", network, resolution=R, role="teacher",
                      dataset=str(data), config={"root": "data"})
