"""`raml demo` on the command line: JSON through the real catalogue path, help, errors."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.data import toy
from raml_cli.data.toy import generate_toy
from raml_cli.demo import DEMO_STUDENT, DEMO_TEACHER, DemoConfig


def test_demo_command_json_through_the_catalogue(tmp_path: Path, tiny,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `raml download toy` path, with a smaller toy and tiny trainings."""
    monkeypatch.setattr(toy, "generate_toy", functools.partial(generate_toy, **tiny.toy))
    for key, value in tiny.teacher.items():
        monkeypatch.setitem(DEMO_TEACHER, key, value)
    for key, value in {**tiny.student, "batch_size": 4}.items():
        monkeypatch.setitem(DEMO_STUDENT, key, value)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--query-res", "16",
                                      "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"rows", "output_dir"} and payload["output_dir"] == str(out)
    tiny.check_table(payload["rows"], 16, 128)
    assert (out / "data" / "toy").is_dir()
    assert (out / "teacher-128px.safetensors").is_file()
    assert (out / "student-16px.safetensors").is_file()
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == [
        "student-16px-test.h5", "student-lcnet_035-128px-test.h5", "teacher-128px-test.h5",
        "teacher-16px-test.h5"]
    assert (out / "student-lcnet_035-128px.safetensors").is_file()
    assert (out / "tradeoff.png").is_file()

    table = CliRunner().invoke(app, ["demo", "--out", str(out), "--query-res", "16",
                                     "--device", "cpu", "--quiet"])
    assert table.exit_code == 0, table.output
    assert "RAML asymmetric" in table.stdout and "naive asymmetric" in table.stdout
    assert "architecture" in table.stdout and "lighter" in table.stdout


def test_demo_help_shows_an_example() -> None:
    help_text = CliRunner().invoke(app, ["demo", "--help"])
    assert help_text.exit_code == 0 and "raml demo --out raml-demo" in help_text.stdout


@pytest.mark.slow
def test_bad_resolution_is_a_clear_error_in_a_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "raml_cli", "demo", "--query-res", "200",
                           "--out", "/nonexistent-never-created"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "--query-res (200) must be below the database resolution" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path("/nonexistent-never-created").exists()


def test_init_weights_switches_the_teacher_to_fine_tuning(tmp_path: Path) -> None:
    from raml_cli.demo import DEMO_PRETRAINED_TEACHER

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    options = DemoConfig(init_weights=weights).teacher_options()
    assert options["init"] == str(weights)
    assert {k: options[k] for k in DEMO_PRETRAINED_TEACHER} == DEMO_PRETRAINED_TEACHER
    assert DemoConfig().teacher_options() == DEMO_TEACHER  # random init: unchanged
    assert DemoConfig().student_options() == DEMO_STUDENT
    assert DemoConfig(init_weights=weights).student_options()["lr"] == 1e-3
    assert DemoConfig(arch="resnet10t").teacher_options()["arch"] == "resnet10t"
    missing = CliRunner().invoke(app, ["demo", "--init-weights", str(tmp_path / "none.pth"),
                                       "--out", str(tmp_path / "demo")])
    assert missing.exit_code == 2
    assert "is not a file" in missing.output and "Traceback" not in missing.output
