"""raml tune distill: a two-trial search over the reference's space on the tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app


@pytest.mark.slow
def test_tune_distill_searches_the_reference_space(teacher_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    result = CliRunner().invoke(app, [
        "tune", "distill", "--teacher", str(teacher_file), "--query-res", "24", "--epochs", "1",
        "--batch-size", "4", "--augs", "2", "--accumulate", "1", "--images-per-epoch", "8",
        "--workers", "0", "--device", "cpu", "--trials", "2", "--objective", "recall@1",
        "--no-prune", "--keep-all", "-o", str(out), "-q", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [t["state"] for t in found["trials"]] == ["complete", "complete"]
    given = [t for t in found["trials"] if t["given"]][0]
    assert given["params"] == {"lr": 1.4025e-4, "lambda1": 0.7718, "lambda2": 0.6684}
    other = [t for t in found["trials"] if not t["given"]][0]["params"]
    assert 1e-4 <= other["lr"] <= 2e-4 and all(0.6 <= other[k] <= 0.8
                                               for k in ("lambda1", "lambda2"))
    assert len(list(out.glob("trial-*/student.safetensors"))) == 2  # --keep-all
    assert json.loads((out / "best.json").read_text()) == found["best"]["params"]
