"""Exports of the tiny shared teacher (tests/conftest.py), made once per test session: the
ONNX exporter takes a few seconds even for a tiny network."""

from pathlib import Path

import pytest

from raml_cli.export import export_model


@pytest.fixture(scope="session")
def float_fixed(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher exported with the defaults: float32 [1, 3, 32, 32] normalised input."""
    out = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    return export_model(teacher_file, out).output


@pytest.fixture(scope="session")
def uint8_dynamic(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher exported --with-preprocessing --dynamic-batch: uint8 [B, 32, 32, 3]."""
    out = tmp_path_factory.mktemp("onnx") / "teacher-uint8.onnx"
    return export_model(teacher_file, out, with_preprocessing=True, dynamic_batch=True).output
