"""Architecture asymmetry: a student of another (lighter) backbone distilled into the
teacher's space (``raml distill --student-arch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.model.files import file_sha256, load_model, read_model_info
from raml_cli.train.distill import DistillConfig, distill_result, student_network_config
from raml_cli.train.options import read_teacher_info

R = 32  # the teacher_file fixture's resolution (conftest.py)


def _config(teacher: Path, out: Path, query_res: int = R, **kw: Any) -> DistillConfig:
    options = dict(output=out, epochs=2, batch_size=4, accumulate=1, augs=2, lr=1e-3,
                   images_per_epoch=0, workers=0, device="cpu", seed=1, threads=1,
                   student_arch="test_efficientnet", init="random")
    options.update(kw)
    return DistillConfig.from_options(teacher, query_res, **options)


def _asymmetric_recall(student: torch.nn.Module, teacher_file: Path) -> float:
    """R@1 of student queries at R against the teacher's database at R, each image its
    own class (a query's one positive is the teacher's vector of the same image): how
    well the student's vectors live in the teacher's space; chance is 1 / images."""
    from raml_cli.data.catalog import load_dataset
    from raml_cli.devices import torch_threads
    from raml_cli.embed import embed_in_memory
    from raml_cli.evaluate import evaluate_arrays

    teacher, _ = load_model(teacher_file)
    splits = load_dataset(read_model_info(teacher_file).dataset)
    samples = splits.split("train")
    ids = np.arange(len(samples))
    with torch_threads(1):
        queries = embed_in_memory(student, samples, splits.root, R, device="cpu")
        database = embed_in_memory(teacher, samples, splits.root, R, device="cpu")
    return float(evaluate_arrays(queries, ids, database, ids, ks=(1,),
                                 exclude_self=False)["recall@1"])


def test_lighter_student_retrieves_from_the_teacher_database(teacher_file: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "student.safetensors"
    distill_result(_config(teacher_file, out, epochs=8, lr=3e-3, seed=2))
    info = read_model_info(out)
    assert info.architecture == "test_efficientnet" and info.role == "student"
    assert info.teacher_sha256 == file_sha256(teacher_file)
    assert info.config["teacher_architecture"] == "test_resnet"
    # The teacher's space: its 16-d output, through a whitening layer of that size.
    assert info.embedding_dim == 16 and info.whitening == 16
    student, _ = load_model(out)
    # An undistilled student: same architecture and calibration, no training.
    config = _config(teacher_file, tmp_path / "none.safetensors", epochs=1, lr=1e-12, seed=2)
    distill_result(config)
    undistilled, _ = load_model(config.output)
    chance = 1 / 32  # the fixture's 8 classes x 4 images
    distilled, baseline = (_asymmetric_recall(student, teacher_file),
                           _asymmetric_recall(undistilled, teacher_file))
    assert distilled > chance and distilled > baseline, (distilled, baseline)


def test_init_teacher_needs_the_teachers_architecture(teacher_file: Path,
                                                      tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        distill_result(_config(teacher_file, tmp_path / "s.safetensors", init="teacher"))
    message = str(err.value)
    assert "test_efficientnet" in message and "test_resnet" in message
    assert "--init pretrained" in message and "--init random" in message
    assert "--init-weights" in message
    with pytest.raises(InputError, match="Unknown backbone"):
        distill_result(_config(teacher_file, tmp_path / "s.safetensors",
                               student_arch="no_such_net"))


def test_student_config_is_the_teachers_for_the_same_architecture(teacher_file: Path) -> None:
    info = read_teacher_info(teacher_file)
    assert student_network_config(info, "test_resnet") == info.network_config()
    other = student_network_config(info, "test_efficientnet")
    assert other.whitening == info.embedding_dim and other.pooling == info.pooling


def test_random_init_measures_batchnorm_statistics(teacher_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from raml_cli.progress import Reporter

    out = tmp_path / "student.safetensors"
    distill_result(_config(teacher_file, out, epochs=1, student_arch=None, query_res=16),
                   Reporter(enabled=False))
    assert "BatchNorm statistics" in capsys.readouterr().err
    student, _ = load_model(out)
    means = [m.running_mean for m in student.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert means and all(not torch.equal(m, torch.zeros_like(m)) for m in means)


def test_init_weights_starts_from_a_file(teacher_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.safetensors"
    config = _config(teacher_file, out, epochs=1, student_arch=None, init_weights=teacher_file)
    assert config.init == "weights"
    distill_result(config)
    assert read_model_info(out).config["init_weights"] == str(teacher_file)
    with pytest.raises(InputError, match="does not exist"):
        distill_result(_config(teacher_file, out, init_weights=tmp_path / "missing.pt"))


def test_command_line_names_the_fix(teacher_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from raml_cli.cli.app import app

    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher_file), "--query-res",
                                      "32", "--student-arch", "test_efficientnet", "-o",
                                      str(tmp_path / "s.safetensors")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--init pretrained" in result.output
    assert "--student-arch" in CliRunner().invoke(app, ["distill", "--help"]).output
