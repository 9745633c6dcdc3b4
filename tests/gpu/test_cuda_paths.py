"""The CUDA paths end to end: extraction, training and distillation on the GPU (skipped
without one; ``benchmarks/gpu.sh`` runs them on a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app

pytestmark = pytest.mark.cuda
runner = CliRunner()

TINY = ["--arch", "resnet10t", "--no-pretrained", "--dim", "16", "--res", "32",
        "--batch-size", "8", "--negatives", "2", "--pool-size", "200", "--workers", "0",
        "--seed", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raml_cli.data.toy import generate_toy

    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=12, images_per_class=8, min_side=40, max_side=56)
    return dest


def test_train_embed_and_distill_on_the_gpu(toy: Path, tmp_path: Path) -> None:
    from raml_cli.store import read_embeddings

    teacher = tmp_path / "teacher.safetensors"
    result = runner.invoke(app, ["train-teacher", "--dataset", str(toy), "-o", str(teacher),
                                 *TINY, "--epochs", "1", "--images-per-epoch", "16",
                                 "--device", "cuda"])
    assert result.exit_code == 0, result.output
    rows = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"db-{device}.h5"
        result = runner.invoke(app, ["embed", str(teacher), "--dataset", str(toy), "--split",
                                     "test", "-o", str(out), "--device", device, "--quiet"])
        assert result.exit_code == 0, result.output
        rows[device] = read_embeddings(out).embeddings
    # bf16 autocast on the GPU: the same vectors up to bf16 rounding.
    cosines = np.einsum("nd,nd->n", rows["cuda"], rows["cpu"])
    assert cosines.min() > 0.99
    student = tmp_path / "student.safetensors"
    result = runner.invoke(app, ["distill", "--teacher", str(teacher), "--dataset", str(toy),
                                 "-o", str(student), "--query-res", "24", "--epochs", "1",
                                 "--images-per-epoch", "16", "--batch-size", "8",
                                 "--accumulate", "1", "--workers", "0", "--device", "cuda",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert student.exists()


def test_info_times_the_gpu(toy: Path, tmp_path: Path) -> None:
    import json

    from raml_cli.model.files import save_model
    from raml_cli.model.network import NetworkConfig, build_network

    path = save_model(tmp_path / "m.safetensors",
                      build_network(NetworkConfig("resnet18", whitening=64)), resolution=112,
                      role="teacher", dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "112", "--batch", "1,8",
                                 "--repeats", "3", "--device", "cuda", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["device"].startswith("cuda") and out["inference"]["folded_batchnorms"] == 20
    assert out["bare_gflops"] > 1000  # any datacenter GPU's bf16 product
    assert all(t["ms"] > 0 for t in out["cost"][0]["timings"])
    assert torch.cuda.is_available()
