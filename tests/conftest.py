"""Test-wide settings (nothing waits on a model hub, torch stays on few threads) and the tiny
teacher that the distillation, tradeoff and tune tests share."""

import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
# raml's caches (the ONNX exports `raml search` makes, released models) go to a folder of
# this run, never to the user's ~/.cache; subprocesses inherit it.
_CACHE_HOME = tempfile.mkdtemp(prefix="raml-tests-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from raml_cli.data.toy import generate_toy  # noqa: E402
from raml_cli.model.files import save_model  # noqa: E402
from raml_cli.model.network import NetworkConfig, build_network  # noqa: E402

#: The teacher_file fixture's resolution (the tests that use the fixture rely on it).
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where torch sees a GPU (benchmarks/gpu.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_CACHE_HOME, ignore_errors=True)
