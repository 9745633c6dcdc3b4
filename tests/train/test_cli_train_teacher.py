"""``raml train-teacher`` on the command line: errors a user can cause, JSON, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app

runner = CliRunner()

TINY = ["--arch", "resnet10t", "--no-pretrained", "--dim", "16", "--res", "32",
        "--batch-size", "8", "--negatives", "2", "--pool-size", "200", "--workers", "0",
        "--device", "cpu", "--seed", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 classes x 8 images of 40-56 px (train: 6 classes)."""
    from raml_cli.data.toy import generate_toy

    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=12, images_per_class=8, min_side=40, max_side=56)
    return dest


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train-teacher", *args])
    return result.exit_code, result.output


def test_help_shows_an_example() -> None:
    code, out = _run("--help")
    assert code == 0 and "raml train-teacher --dataset" in out and "--preset" in out


def test_dataset_not_downloaded(tmp_path: Path) -> None:
    code, out = _run("--dataset", "toy", "--root", str(tmp_path / "none"),
                     "-o", str(tmp_path / "t.safetensors"), *TINY)
    assert code == 2 and "raml download toy" in out and "Traceback" not in out


def test_unwritable_output_is_reported_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out = _run("--dataset", "toy", "--root", str(tmp_path / "none"),
                     "-o", str(blocker / "t.safetensors"), *TINY)
    assert code == 2 and "output folder" in out  # not the dataset error: checked first


def test_too_few_images_per_class(toy: Path, tmp_path: Path) -> None:
    code, out = _run("--dataset", str(toy), "-o", str(tmp_path / "t.safetensors"), *TINY,
                     "--samples-per-class", "9", "--batch-size", "18")
    assert code == 2 and "Too few images per class" in out
    assert not (tmp_path / "t.log.jsonl").exists() or "epoch" not in \
        (tmp_path / "t.log.jsonl").read_text()


def test_resolution_and_preset_errors(toy: Path, tmp_path: Path) -> None:
    code, out = _run("--dataset", str(toy), "-o", str(tmp_path / "t.safetensors"), *TINY,
                     "--res", "4")
    assert code == 2 and "--res must be between 8" in out
    code, out = _run("--dataset", str(toy), "--preset", "paper", "-o",
                     str(tmp_path / "t.safetensors"))
    assert code == 2 and "--preset paper" in out


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(toy: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "t.safetensors"
    code, out = _run("--dataset", str(toy), "-o", str(out_file), *TINY, "--lr", "1e30",
                     "--epochs", "3", "--images-per-epoch", "8")
    assert code == 2 and "Traceback" not in out
    assert "non-finite" in out or "became nan" in out
    assert "kept" in out and out_file.with_suffix(".ckpt").exists() and not out_file.exists()
    code, out = _run("--dataset", str(toy), "-o", str(out_file), *TINY)
    assert code == 2 and "--resume" in out  # the kept checkpoint is not silently overwritten


@pytest.mark.slow
def test_subprocess_json_only_on_stdout(toy: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "teacher.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "raml_cli", "train-teacher", "--dataset", str(toy), "-o",
         str(out_file), *TINY, "--epochs", "1", "--images-per-epoch", "16", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output"] == str(out_file) and result["steps"] == 2
    assert out_file.exists() and not out_file.with_suffix(".ckpt").exists()


@pytest.mark.slow
def test_validation_spread_reaches_the_log_and_the_table(toy: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "t.safetensors"
    result = runner.invoke(app, ["train-teacher", "--dataset", str(toy), "-o", str(out_file),
                                 *TINY, "--epochs", "1", "--images-per-epoch", "16",
                                 "--val-every", "1"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in out_file.with_suffix(".log.jsonl").read_text()
              .splitlines()]
    val = next(e["metrics"] for e in events if e["event"] == "val")
    assert -1 <= val["mean_cosine"] < val["nn_cosine"] <= 1
    assert f"val mean_cosine (epoch 1) │ {val['mean_cosine']:.4f}" in " ".join(
        result.stdout.split())
    assert f"mean_cosine {val['mean_cosine']:.4f}" in result.stderr  # the loop's log line


@pytest.mark.slow
def test_torchrun_two_cpu_processes(toy: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "raml_cli", "train-teacher", "--dataset", str(toy), "-o", str(out_file), *TINY,
         "--epochs", "2", "--images-per-epoch", "0", "--batch-size", "4", "--val-every", "2",
         "--json"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # one JSON document: rank 0 alone prints
    # fit = 3 classes x 8 images = 24 anchors per epoch = 6 micro-batches of 4, 3 per
    # process: 3 steps per epoch.
    assert result["steps"] == 6 and len(result["validations"]) == 1
    events = [json.loads(line) for line in Path(result["log"]).read_text().splitlines()]
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2
    assert sum(e["event"] == "end" for e in events) == 1  # one writer

    from raml_cli.model.files import load_model

    _, info = load_model(out_file)
    assert info.role == "teacher" and info.config["world_size"] == 2
