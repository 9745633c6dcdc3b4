"""`raml tradeoff` on a tiny toy: 2 architectures x 2 resolutions, the JSON rows, the
picture, the reuse of finished cells, and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.errors import InputError
from raml_cli.tradeoff import TradeoffConfig, plan_cells, run_tradeoff

R = 32
TINY = {"epochs": 1, "augs": 2, "batch_size": 4, "accumulate": 1, "images_per_epoch": 8,
        "lr": 1e-3}


def _args(teacher: Path, out: Path) -> list[str]:
    return ["tradeoff", "--teacher", str(teacher), "--query-res", "16,32",
            "--student-arch", "test_resnet,test_efficientnet", "--arch-init", "random",
            "--init", "random", "--epochs", "1", "--augs", "2", "--batch-size", "4",
            "--accumulate", "1", "--images-per-epoch", "8", "--workers", "0", "--threads", "1",
            "--repeats", "1", "--latency-batches", "1,2", "--device", "cpu", "-o", str(out),
            "--json", "--quiet"]


def test_grid_rows_picture_and_reuse(teacher_file: Path, tmp_path: Path) -> None:
    teacher = teacher_file  # the shared tiny teacher (tests/conftest.py)
    out = tmp_path / "grid"
    first = CliRunner().invoke(app, _args(teacher, out))
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert json.loads((out / "tradeoff.json").read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["kind"], r["student_arch"], r["query_res"]) for r in rows] == [
        ("teacher", "test_resnet", 32), ("naive", "test_resnet", 16),
        ("resolution", "test_resnet", 16), ("architecture", "test_efficientnet", 32),
        ("hybrid", "test_efficientnet", 16)]
    for row in rows:
        assert {"recall@1", "recall@8", "map", "map@r", "query_gmacs"} <= set(row)
        assert 0 <= row["recall@1"] <= row["recall@8"] <= 1
        assert row["query_gmacs"] > 0 and row["database_res"] == R
        assert set(row["query_latency_ms"]) == {"batch_1", "batch_2"}
        assert row["query_latency_ms"]["batch_1"] > 0
        assert {"recall@1", "map", "map@r"} == set(row["symmetric"])
        assert Path(row["model"]).is_file() and Path(row["queries"]).is_file()
    by = {(r["kind"]): r for r in rows}
    assert by["teacher"]["recall@1"] == by["teacher"]["symmetric"]["recall@1"]
    assert by["naive"]["query_gmacs"] == by["resolution"]["query_gmacs"]  # same network
    assert by["hybrid"]["query_gmacs"] < by["architecture"]["query_gmacs"]
    with Image.open(out / "tradeoff.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600
    assert result["reused"] == []

    again = json.loads(CliRunner().invoke(app, _args(teacher, out)).stdout)
    assert len(again["reused"]) == 3  # every student reused: no training
    for old, new in zip(rows, again["rows"], strict=True):
        assert {k: v for k, v in old.items() if k not in ("query_latency_ms", "reused")} \
            == {k: v for k, v in new.items() if k not in ("query_latency_ms", "reused")}


def test_plan_and_user_errors(teacher_file: Path, tmp_path: Path) -> None:
    teacher = teacher_file  # the shared tiny teacher (tests/conftest.py)
    cells = plan_cells(TradeoffConfig(teacher, (32, 16, 8)), "test_resnet", R)
    assert [(c.kind, c.query_res) for c in cells] == [
        ("teacher", 32), ("naive", 16), ("naive", 8), ("resolution", 16), ("resolution", 8)]
    with pytest.raises(InputError, match="at most the database resolution"):
        run_tradeoff(TradeoffConfig(teacher, (64,), out=tmp_path / "x", device="cpu"))
    with pytest.raises(InputError, match="Unknown backbone"):
        run_tradeoff(TradeoffConfig(teacher, (16,), ("no_such_net",), out=tmp_path / "x",
                                    device="cpu", distill=TINY, arch_init="random"))
    with pytest.raises(InputError, match="--arch-init must be one of pretrained, random"):
        run_tradeoff(TradeoffConfig(teacher, (16,), ("test_efficientnet",), device="cpu",
                                    out=tmp_path / "x", arch_init="teacher"))
    bad = CliRunner().invoke(app, ["tradeoff", "--teacher", str(teacher), "--query-res",
                                   "16,x", "-o", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "--query-res" in bad.output and "Traceback" not in bad.output
