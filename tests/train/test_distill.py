"""Distillation on a tiny real toy dataset: files, frozen teacher, modes, resume, presets
(the command line: test_cli_distill.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.model.files import file_sha256, load_model, read_model_info
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.store import read_attributes
from raml_cli.train.checkpoint import checkpoint_path
from raml_cli.train.distill import (
    DistillConfig,
    DistillTask,
    distill_result,
    teacher_cache_path,
)
from raml_cli.train.loop import LoopConfig, run_training
from raml_cli.train.options import DISTILL_PAPER_PRESETS as PAPER_PRESETS
from raml_cli.train.runlog import log_path, read_log

R, r = 32, 16  # R: the resolution of the teacher_file fixture (conftest.py)


def _config(teacher: Path, out: Path, **kw: Any) -> DistillConfig:
    # One thread: these networks are too small to gain from more, and a shared CPU makes
    # OpenMP threads wait on each other.
    options = dict(output=out, epochs=2, batch_size=4, accumulate=1, augs=2, lr=1e-3,
                   images_per_epoch=0, workers=0, device="cpu", seed=1, threads=1)
    options.update(kw)
    return DistillConfig.from_options(teacher, r, **options)


def _mean_cosine(student: torch.nn.Module, teacher: torch.nn.Module, data: Path) -> float:
    from raml_cli.data.catalog import load_dataset
    from raml_cli.devices import torch_threads
    from raml_cli.embed import embed_in_memory

    splits = load_dataset(str(data))
    samples = splits.split("train")
    with torch_threads(1):
        s = embed_in_memory(student, samples, splits.root, r, device="cpu")
        t = embed_in_memory(teacher, samples, splits.root, R, device="cpu")
    return float((s * t).sum(axis=1).mean())


def test_aug_mode_writes_a_student_of_the_teacher(teacher_file: Path, tmp_path: Path) -> None:
    before = file_sha256(teacher_file)
    out = tmp_path / "student.safetensors"
    result = distill_result(_config(teacher_file, out, val_every=1))
    info = read_model_info(out)
    assert info.role == "student" and info.resolution == r
    assert info.teacher_sha256 == before == file_sha256(teacher_file)  # teacher untouched
    assert info.architecture == "test_resnet" and info.embedding_dim == 16
    assert info.config["mode"] == "aug" and info.config["database_res"] == R
    assert info.config["train_split"] == "fit"
    # Asymmetric validation ran after each epoch, and the log has the loss terms.
    assert [v["epoch"] for v in result.validations] == [1, 2]
    assert set(result.validations[-1]["metrics"]) == {
        "recall@1", "map", "map@r", "mean_cosine", "nn_cosine", "database_mean_cosine"}
    # The spread reaches the log: the student's queries, and the teacher's database (the
    # same number each time: measured once).
    vals = [r["metrics"] for r in read_log(log_path(out)) if r["event"] == "val"]
    assert len(vals) == 2 and vals[0]["database_mean_cosine"] == vals[1]["database_mean_cosine"]
    assert all(-1 <= v["mean_cosine"] < v["nn_cosine"] <= 1 for v in vals)
    assert vals[0]["mean_cosine"] != vals[1]["mean_cosine"]  # the student's, re-measured
    epochs = [r for r in read_log(log_path(out)) if r["event"] == "epoch"]
    assert {"loss_abs", "loss_ts", "loss_ss"} <= set(epochs[-1])
    assert epochs[-1]["loss_ts"] > 0 and epochs[-1]["loss_ss"] > 0


def test_student_moves_towards_the_teacher(teacher_file: Path, tmp_path: Path) -> None:
    """From random weights, a few epochs bring student@r vectors closer to teacher@R ones."""
    teacher, _ = load_model(teacher_file)
    data = Path(read_model_info(teacher_file).dataset)
    torch.manual_seed(3)
    start = _mean_cosine(build_network(NetworkConfig("test_resnet", whitening=16)), teacher, data)
    out = tmp_path / "student.safetensors"
    distill_result(_config(teacher_file, out, init="random", epochs=6, lr=3e-3, seed=3))
    student, _ = load_model(out)
    end = _mean_cosine(student, teacher, data)
    assert end > start + 0.05, (start, end)


def test_teacher_stays_frozen(teacher_file: Path, tmp_path: Path) -> None:
    config = _config(teacher_file, tmp_path / "student.safetensors", epochs=1)
    config.check()
    task = DistillTask(config)
    loop = LoopConfig(output=config.output, epochs=1, lr=1e-2, device="cpu", workers=0,
                      threads=1)
    run_training(task, loop)
    from raml_cli.model.inference import prepare_for_inference

    # The teacher runs prepared for inference (BatchNorm folded): after training it is
    # still exactly the file's network prepared the same way.
    reference, _ = load_model(teacher_file)
    reference = prepare_for_inference(reference, "cpu", copy=False,
                                      channels_last=task.teacher.inference.channels_last)
    assert task.teacher.inference.folded > 0
    assert not task.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in task.teacher.parameters())
    for (name, value), ref in zip(task.teacher.state_dict().items(),
                                  reference.state_dict().values(), strict=True):
        assert torch.equal(value, ref), name


def test_regression_mode_caches_teacher_vectors(teacher_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "student.safetensors"
    result = distill_result(_config(teacher_file, out, mode="regression", augs=8))
    cache = teacher_cache_path(out)
    attrs = read_attributes(cache)
    assert attrs["model_sha256"] == file_sha256(teacher_file)
    assert int(attrs["resolution"]) == R and attrs["role"] == "teacher"
    epochs = [r for r in read_log(log_path(out)) if r["event"] == "epoch"]
    assert epochs[-1]["loss_ts"] == 0.0 and epochs[-1]["loss_ss"] == 0.0  # P = 1
    assert result.images_per_second > 0
    mtime = cache.stat().st_mtime_ns
    from raml_cli.progress import Reporter

    distill_result(_config(teacher_file, out, mode="regression"), Reporter(enabled=False))
    assert cache.stat().st_mtime_ns == mtime  # reused, not recomputed
    assert "reusing" in capsys.readouterr().err


class _Killed(Exception):
    pass


class _KilledTask(DistillTask):
    def batches(self, epoch: int, start: int, ctx: Any) -> Any:
        for i, batch in enumerate(super().batches(epoch, start, ctx), start):
            if (epoch, i) == (1, 2):
                raise _Killed
            yield batch


def test_resume_gives_the_uninterrupted_model(teacher_file: Path, tmp_path: Path) -> None:
    def loop(config: DistillConfig, **kw: Any) -> LoopConfig:
        return LoopConfig(output=config.output, epochs=2, lr=1e-3, seed=1, device="cpu",
                          workers=0, checkpoint_every=1, threads=1, **kw)

    whole = _config(teacher_file, tmp_path / "a.safetensors")
    run_training(DistillTask(whole), loop(whole))
    cut = _config(teacher_file, tmp_path / "b.safetensors")
    with pytest.raises(_Killed):
        run_training(_KilledTask(cut), loop(cut))
    assert checkpoint_path(cut.output).exists()
    run_training(DistillTask(cut), loop(cut, resume=True))
    a, _ = load_model(whole.output)
    b, _ = load_model(cut.output)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_worker_processes_change_nothing(teacher_file: Path, tmp_path: Path) -> None:
    """Augmentations are seeded per item, so decoding in a worker gives the same model."""
    inline = _config(teacher_file, tmp_path / "a.safetensors", workers=0)
    worker = _config(teacher_file, tmp_path / "b.safetensors", workers=1)
    distill_result(inline)
    distill_result(worker)
    a, _ = load_model(inline.output)
    b, _ = load_model(worker.output)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_presets_and_option_checks(teacher_file: Path, tmp_path: Path) -> None:
    config = DistillConfig.from_options(teacher_file, 112, preset="paper", dataset="cars196",
                                        lr=5e-5)
    assert config.lambda1 == PAPER_PRESETS["cars196"]["lambda1"] == 0.6371
    assert config.lr == 5e-5  # an explicit option wins over the preset
    assert (config.augs, config.batch_size, config.accumulate, config.seed) == (8, 8, 25, 1234)
    with pytest.raises(InputError, match="not for"):
        DistillConfig.from_options(teacher_file, 16, preset="paper")  # the teacher's own data
    with pytest.raises(InputError, match="--no-mixup"):
        _config(teacher_file, tmp_path / "s.safetensors", batch_size=1).check()
    with pytest.raises(InputError, match="--mode"):
        _config(teacher_file, tmp_path / "s.safetensors", mode="sym").check()
    with pytest.raises(InputError, match="does not exist"):
        _config(tmp_path / "missing.safetensors", tmp_path / "s.safetensors").check()
    assert np.isclose(DistillConfig(teacher_file, 16).lambda2, 0.6684)
