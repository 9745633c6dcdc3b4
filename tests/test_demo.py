"""``raml demo``: the table's structure on a tiny run, reuse on rerun, the command line."""

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
from raml_cli.demo import DEMO_STUDENT, DEMO_TEACHER, ROW_NAMES, DemoConfig, run_demo

TINY_TEACHER = {"epochs": 1, "dim": 16, "images_per_epoch": 16, "pool_size": 32,
                "batch_size": 8, "negatives": 1}
TINY_STUDENT = {"epochs": 1, "augs": 2, "batch_size": 4, "images_per_epoch": 8}
TINY_TOY = {"num_classes": 8, "images_per_class": 4, "min_side": 40, "max_side": 60}
KEYS = {"name", "query_res", "database_res", "recall@1", "recall@4", "map", "query_gmacs"}


def _tiny(out: Path, dataset: Path | None) -> DemoConfig:
    return DemoConfig(out=out, query_res=16, database_res=32, device="cpu",
                      dataset=None if dataset is None else str(dataset),
                      teacher=TINY_TEACHER, student=TINY_STUDENT, workers=0, threads=1)


def _check_table(rows: list[dict], query_res: int, database_res: int) -> None:
    assert [r["name"] for r in rows] == list(ROW_NAMES)
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        assert set(row) == KEYS
        for key in ("recall@1", "recall@4", "map"):
            assert 0.0 <= row[key] <= 1.0
        assert row["recall@4"] >= row["recall@1"]
        assert row["query_gmacs"] > 0
    assert by_name["teacher_high_sym"]["query_res"] == database_res
    for name in ("teacher_low_sym", "naive_asym", "raml_asym", "student_low_sym"):
        assert by_name[name]["query_res"] == query_res
    assert by_name["naive_asym"]["database_res"] == by_name["raml_asym"]["database_res"] \
        == database_res
    assert by_name["student_low_sym"]["database_res"] == query_res
    # The query side costs about (r/R)^2 of the database side (convolutions scale with pixels).
    ratio = by_name["raml_asym"]["query_gmacs"] / by_name["teacher_high_sym"]["query_gmacs"]
    assert ratio == pytest.approx((query_res / database_res) ** 2, rel=0.35)
    assert by_name["raml_asym"]["query_gmacs"] == by_name["teacher_low_sym"]["query_gmacs"]


def test_tiny_demo_table_files_and_reuse(tmp_path: Path) -> None:
    data = tmp_path / "toy"
    generate_toy(data, seed=0, **TINY_TOY)
    out = tmp_path / "demo"
    result = run_demo(_tiny(out, data))
    _check_table(result.rows, 16, 32)
    assert result.reused == []
    for path in result.files.values():
        assert Path(path).is_file() and out in Path(path).parents
    record = json.loads((out / "demo.json").read_text())
    assert record["rows"] == result.rows and record["output_dir"] == str(out)

    again = run_demo(_tiny(out, data))
    assert again.rows == result.rows
    assert set(again.reused) >= {"teacher", "student"} and len(again.reused) == 5
    assert again.seconds["teacher"] < 2 and again.seconds["student"] < 2

    # Another query resolution reuses the teacher but distils and embeds anew.
    other = run_demo(DemoConfig(**{**_tiny(out, data).__dict__, "query_res": 24}))
    _check_table(other.rows, 24, 32)
    assert "teacher" in other.reused and "student" not in other.reused


def test_demo_command_json_through_the_catalogue(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `raml download toy` path, with a smaller toy and tiny trainings."""
    monkeypatch.setattr(toy, "generate_toy", functools.partial(generate_toy, **TINY_TOY))
    for key, value in TINY_TEACHER.items():
        monkeypatch.setitem(DEMO_TEACHER, key, value)
    for key, value in {**TINY_STUDENT, "batch_size": 4}.items():
        monkeypatch.setitem(DEMO_STUDENT, key, value)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--query-res", "16",
                                      "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"rows", "output_dir"} and payload["output_dir"] == str(out)
    _check_table(payload["rows"], 16, 128)
    assert (out / "data" / "toy").is_dir()
    assert (out / "teacher-128px.safetensors").is_file()
    assert (out / "student-16px.safetensors").is_file()
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == [
        "student-16px-test.h5", "teacher-128px-test.h5", "teacher-16px-test.h5"]

    table = CliRunner().invoke(app, ["demo", "--out", str(out), "--query-res", "16",
                                     "--device", "cpu", "--quiet"])
    assert table.exit_code == 0, table.output
    assert "RAML asymmetric" in table.stdout and "naive asymmetric" in table.stdout


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


@pytest.mark.slow
def test_default_demo_shows_the_papers_effect(tmp_path: Path) -> None:
    """The full default demo (a few minutes on 2 CPU cores): RAML beats both baselines."""
    result = run_demo(DemoConfig(out=tmp_path / "demo", device="cpu"))
    _check_table(result.rows, 40, 128)
    raml, naive = result.row("raml_asym"), result.row("naive_asym")
    low, high = result.row("teacher_low_sym"), result.row("teacher_high_sym")
    assert raml["recall@1"] >= naive["recall@1"] + 0.05
    assert raml["recall@1"] > low["recall@1"]
    assert high["recall@1"] > raml["recall@1"]  # the expensive upper bound stays on top


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
