"""`raml distill` on the command line (CliRunner and a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.model.files import file_sha256, read_model_info


def test_tiny_run_prints_json_and_writes_the_student(teacher_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.safetensors"
    result = CliRunner().invoke(app, [
        "distill", "--teacher", str(teacher_file), "--query-res", "16", "-o", str(out),
        "--epochs", "1", "--augs", "2", "--batch-size", "4", "--accumulate", "1",
        "--images-per-epoch", "8", "--workers", "0", "--device", "cpu", "--no-mixup",
        "--lambda1", "0.5", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["output"] == str(out) and payload["epochs"] == 1 and payload["steps"] == 2
    info = read_model_info(out)
    assert info.role == "student" and info.resolution == 16
    assert info.teacher_sha256 == file_sha256(teacher_file)
    assert info.config["mixup"] == 0.0 and info.config["lambda1"] == 0.5
    assert info.config["init"] == "teacher"


def test_user_errors_are_one_paragraph(teacher_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["distill", "--teacher", str(tmp_path / "none.safetensors"),
                                  "--query-res", "16"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    preset = runner.invoke(app, ["distill", "--teacher", str(teacher_file), "--query-res",
                                 "16", "--preset", "paper"])
    assert preset.exit_code == 2 and "--preset paper" in preset.output
    mode = runner.invoke(app, ["distill", "--teacher", str(teacher_file), "--query-res", "16",
                               "--mode", "triplet"])
    assert mode.exit_code == 2 and "--mode must be one of aug, regression" in mode.output
    helped = runner.invoke(app, ["distill", "--help"])
    assert helped.exit_code == 0 and "raml distill --teacher teacher.safetensors" in helped.output


@pytest.mark.slow
def test_subprocess_reports_a_missing_teacher(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "raml_cli", "distill", "--teacher",
                           str(tmp_path / "none.safetensors"), "--query-res", "112"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "raml train-teacher" in done.stderr
    assert "Traceback" not in done.stderr
