"""Tiny real inputs for index and search tests: synthetic embeddings files, image folders,
a teacher, its student and a student of another teacher (tiny timm networks)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raml_cli.model.files import file_sha256, save_model
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.store import write_embeddings


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """Unit rows around ``clusters`` centres (a point = centre + noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def synthetic_db(tmp_path) -> tuple[Path, np.ndarray]:
    """A 3,000 x 32 embeddings file and its rows."""
    x = clustered(3000, 32)
    path = write_embeddings(tmp_path / "db.h5", x, np.arange(3000) % 7,
                            [f"c{i % 7}/img{i}.jpg" for i in range(3000)],
                            {"model_sha256": "0" * 64, "role": "teacher", "resolution": 448,
                             "architecture": "resnet50", "dataset": "synthetic"})
    return path, x


def _model(path: Path, seed: int, role: str, whitening: int = 16,
           teacher: Path | None = None) -> Path:
    torch.manual_seed(seed)
    network = build_network(NetworkConfig("test_resnet", whitening=whitening))
    return save_model(path, network, resolution=32 if role == "student" else 48, role=role,
                      dataset="toy", config={"seed": seed},
                      teacher_sha256=file_sha256(teacher) if teacher else None)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """``teacher``, its ``student``, ``other_teacher``, ``stranger`` (a student of the other
    teacher) and ``wide`` (a student of the teacher with 8-d outputs)."""
    root = tmp_path_factory.mktemp("models")
    teacher = _model(root / "teacher.safetensors", 0, "teacher")
    other = _model(root / "other.safetensors", 1, "teacher")
    return {"teacher": teacher, "other_teacher": other,
            "student": _model(root / "student.safetensors", 2, "student", teacher=teacher),
            "stranger": _model(root / "stranger.safetensors", 3, "student", teacher=other),
            "wide": _model(root / "wide.safetensors", 4, "student", whitening=8,
                           teacher=teacher)}


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    # Two OpenMP threads on a shared 2-core CI machine spin against each other in faiss's
    # many small k-means steps (3-4x slower than one); the result is the same.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
