"""`raml evaluate --device`: where the scores are computed, and the same metrics on each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.evaluate import evaluation, score_engine
from raml_cli.store import write_embeddings

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 4)
    vectors = (rng.integers(-2, 3, size=(48, 6)) / 2).astype(np.float32)  # exact scores, ties
    vectors[7] = vectors[3]
    vectors[np.linalg.norm(vectors, axis=1) == 0, 0] = 1.0
    names = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    db = write_embeddings(tmp_path / "db.h5", vectors, labels, names, {"role": "teacher"})
    query = write_embeddings(tmp_path / "q.h5", vectors[::-1].copy(), labels[::-1].copy(),
                             names[::-1], {"role": "student"})
    return query, db


def metrics(*args: object) -> dict:
    result = runner.invoke(app, ["evaluate", *map(str, args), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["metrics"]


def test_cpu_and_auto_give_the_default_metrics(files):
    default = metrics(*files)
    assert metrics(*files, "--device", "cpu") == default
    assert metrics(*files, "--device", "auto") == default
    assert metrics(files[1], "--device", "cpu") == metrics(files[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(files):
    result = runner.invoke(app, ["evaluate", *map(str, files), "--device", "cuda", "--json"])
    assert result.exit_code == 2, result.output
    assert "no usable CUDA GPU" in " ".join(result.stderr.split())
    assert result.stdout == "" and "Traceback" not in result.output


def test_an_unknown_device_is_a_clear_error(files):
    result = runner.invoke(app, ["evaluate", *map(str, files), "--device", "tpu"])
    assert result.exit_code == 2, result.output
    assert "is not a valid device" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_auto_takes_the_cpu_numpy_path_without_a_gpu(monkeypatch):
    monkeypatch.setattr(evaluation, "_gpu_driver_present", lambda: False)
    assert score_engine("auto") == ("numpy", None)
    assert score_engine("cpu") == ("numpy", None)
    monkeypatch.setattr(evaluation, "_gpu_driver_present", lambda: True)
    expected = ("torch", "cuda:0") if torch.cuda.is_available() else ("numpy", None)
    assert score_engine("auto") == expected


@pytest.mark.cuda
def test_cuda_gives_the_cpu_metrics(files):
    assert score_engine("cuda") == ("torch", "cuda:0")
    assert metrics(*files, "--device", "cuda") == metrics(*files, "--device", "cpu")
    assert metrics(files[1], "--device", "cuda") == metrics(files[1], "--device", "cpu")
