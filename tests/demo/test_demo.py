"""`raml demo` (the engine, raml_cli/demo.py): the whole pipeline on a tiny toy, reuse, and
the paper's effect with the default settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from raml_cli.data.toy import generate_toy
from raml_cli.demo import DemoConfig, run_demo
from raml_cli.evaluate import space
from raml_cli.progress import Reporter


def test_tiny_demo_table_files_and_reuse(tmp_path: Path, tiny, monkeypatch) -> None:
    data = tmp_path / "toy"
    generate_toy(data, seed=0, **tiny.toy)
    out = tmp_path / "demo"
    result = run_demo(tiny.config(out, data))
    tiny.check_table(result.rows, 16, 32)
    assert result.reused == []
    for path in result.files.values():
        assert Path(path).is_file() and out in Path(path).parents
    record = json.loads((out / "demo.json").read_text())
    assert record["rows"] == result.rows and record["output_dir"] == str(out)

    again = run_demo(tiny.config(out, data))
    assert again.rows == result.rows
    assert set(again.reused) >= {"teacher", "student", "arch_student"}
    assert len(again.reused) == 7  # 3 models, 4 embeddings files
    assert again.seconds["teacher"] < 2 and again.seconds["student"] < 2
    assert all(-1 <= row["query_mean_cosine"] <= 1 for row in again.rows)

    # A collapsed space is named, once per embeddings file (here: every space "collapses").
    monkeypatch.setattr(space, "COLLAPSE_MEAN_COSINE", -1.0)
    warnings: list[str] = []
    recorder = Reporter(enabled=False, quiet=True)
    recorder.warn = warnings.append
    assert run_demo(tiny.config(out, data), recorder).rows == result.rows
    assert len(warnings) == 4 and all("is collapsed" in w for w in warnings)
    monkeypatch.undo()

    # Another query resolution reuses the teacher but distils and embeds anew.
    other = run_demo(DemoConfig(**{**tiny.config(out, data).__dict__, "query_res": 24}))
    tiny.check_table(other.rows, 24, 32)
    assert "teacher" in other.reused and "student" not in other.reused
    assert "arch_student" in other.reused  # at R: the query resolution does not matter
    with Image.open(out / "tradeoff.png") as picture:
        assert picture.format == "PNG"


@pytest.mark.slow
def test_default_demo_shows_the_papers_effect(tmp_path: Path, tiny) -> None:
    """The full default demo (a few minutes on 2 CPU cores): RAML beats both baselines."""
    result = run_demo(DemoConfig(out=tmp_path / "demo", device="cpu"))
    tiny.check_table(result.rows, 40, 128)
    raml, naive = result.row("raml_asym"), result.row("naive_asym")
    low, high = result.row("teacher_low_sym"), result.row("teacher_high_sym")
    assert raml["recall@1"] >= naive["recall@1"] + 0.05
    assert raml["recall@1"] > low["recall@1"]
    assert high["recall@1"] > raml["recall@1"]  # the expensive upper bound stays on top
