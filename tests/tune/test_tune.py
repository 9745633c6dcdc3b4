"""raml tune: a tiny search on toy, killed with SIGKILL during trial 2 and resumed; the
search space file; the study's options; raml log on a trial's run log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.errors import InputError
from raml_cli.train.options import TeacherConfig
from raml_cli.tune.space import load_space

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raml_cli.data.toy import generate_toy

    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=16, images_per_class=6, min_side=40, max_side=56)
    return dest


def _args(toy: Path, out: Path) -> list[str]:
    return ["tune", "train-teacher", "--dataset", str(toy), "--arch", "test_resnet", "--dim",
            "16", "--no-pretrained", "--res", "32", "--epochs", "1", "--batch-size", "8",
            "--negatives", "2", "--images-per-epoch", "16", "--pool-size", "200", "--workers",
            "0", "--device", "cpu", "--seed", "5", "--trials", "3", "-o", str(out), "-q"]


def _tune_json(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _states(storage: Path) -> list[tuple[int, str]]:
    import optuna

    study = optuna.load_study(study_name="raml", storage=f"sqlite:///{storage}")
    return [(t.number, t.state.name) for t in study.trials]


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_straight_runs_best(toy: Path, tmp_path: Path) -> None:
    straight = _tune_json(_args(toy, tmp_path / "straight"))
    assert [t["state"] for t in straight["trials"]] == ["complete"] * 3
    assert any(t["given"] and t["params"] == {"lr": 1e-4, "margin": 0.7}
               for t in straight["trials"])
    assert (tmp_path / "straight" / "trials.png").stat().st_size > 1000
    models = sorted(p.parent.name for p in (tmp_path / "straight").glob("trial-*/*.safetensors"))
    assert models == [f"trial-{straight['best']['number']}"]  # only the best model kept

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "raml_cli", *_args(toy, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    started = out / "trial-2" / "teacher.log.jsonl"
    deadline = time.monotonic() + 240
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started.exists(), "the search never reached trial 2"
    assert _states(out / "study.db")[-1] == (2, "RUNNING")

    resumed = _tune_json(_args(toy, out))
    assert resumed["ran"] == 1
    assert _states(out / "study.db") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "FAIL"),
                                         (3, "COMPLETE")]
    assert [t for t in resumed["trials"] if t["number"] == 3][0]["retry_of"] == 2
    assert resumed["best"]["params"] == straight["best"]["params"]
    assert resumed["best"]["value"] == pytest.approx(straight["best"]["value"])

    best_json = out / "best.json"
    assert json.loads(best_json.read_text()) == resumed["best"]["params"]
    config = TeacherConfig.from_options(str(toy), preset=str(best_json))
    assert config.lr == resumed["best"]["params"]["lr"]

    # The same command once more has nothing left to do; other options are refused.
    assert _tune_json(_args(toy, out))["ran"] == 0
    refused = CliRunner().invoke(app, [*_args(toy, out), "--objective", "recall@1"])
    assert refused.exit_code == 2 and "other options" in refused.output

    # raml log on the best trial's run log.
    log = Path(resumed["best"]["model"]).with_suffix(".log.jsonl")
    shown = CliRunner().invoke(app, ["log", str(log), "-o", str(tmp_path / "curves.png"),
                                     "--json"])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["finished"] and summary["epochs"] == 1 and summary["kept"]["epoch"] == 1
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("space, message", [
    ({"colour": {"low": 1, "high": 2}}, "not an option"),
    ({"lr": {"low": 2e-4, "high": 1e-4}}, '"low" < "high"'),
    ({"lr": {"low": 0, "high": 1e-4, "log": True}}, "positive"),
    ({"negatives": {"low": 1.5, "high": 4}}, "integer bounds"),
    ({"arch": {"low": 1, "high": 4}}, "not numeric"),
    ({}, "non-empty"),
])
def test_a_bad_space_is_refused(tmp_path: Path, space: dict, message: str) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(InputError, match=message):
        load_space(path, TeacherConfig)


def test_a_space_file_gives_ranges_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": {"low": 1e-5, "high": 1e-3, "log": True},
                                "negatives": {"low": 2, "high": 6},
                                "pool": {"choices": ["gem", "mac"]}}))
    lr, negatives, pool = load_space(path, TeacherConfig)
    assert lr.log and not lr.integer and negatives.integer and pool.choices == ("gem", "mac")


def test_tune_needs_validation(toy: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*_args(toy, tmp_path / "t"), "--val-every", "0"])
    assert result.exit_code == 2 and "--val-every 0" in result.output


def test_log_of_a_file_that_is_not_a_run_log(tmp_path: Path) -> None:
    bad = tmp_path / "x.log.jsonl"
    bad.write_text('{"a": 1}\n')
    result = CliRunner().invoke(app, ["log", str(bad)])
    assert result.exit_code == 2 and "not a raml run log" in result.output
