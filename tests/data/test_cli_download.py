"""`raml download` on the command line: CliRunner for the cases, real subprocesses for the
entry point (and one with the real toy generator)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.data import catalog
from raml_cli.data.marker import MARKER_NAME

runner = CliRunner()


def test_download_json_is_design_md_object_and_rerun_is_a_no_op(tmp_path, server, local_spec,
                                                                  make):
    archive = make.tar(make.cub_files())
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", archive)]],
               {"train": (2, 6), "test": (2, 6)})
    result = runner.invoke(app, ["download", "cub200", "--root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "dataset": "cub200", "root": str(tmp_path / "cub200"),
        "splits": {"train": {"classes": 2, "images": 6}, "val": {"classes": 1, "images": 3},
                   "test": {"classes": 2, "images": 6}}}
    requests = len(server.requests)
    again = runner.invoke(app, ["download", "cub200", "--root", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "already downloaded and verified" in again.stderr
    assert "train" in again.stdout and len(server.requests) == requests


def test_archive_and_no_verify_options(tmp_path, local_spec, make):
    local_spec("cub200", [[make.LocalRelease("CUB_200_2011.tgz", b"official")]],
               {"train": (2, 6), "test": (2, 6)}, serve=False)
    mine = tmp_path / "CUB_200_2011.tgz"
    mine.write_bytes(make.tar(make.cub_files()))
    args = ["download", "cub200", "--root", str(tmp_path / "d"), "--archive", str(mine)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert "--no-verify" in refused.stderr and "Traceback" not in refused.output
    accepted = runner.invoke(app, [*args, "--no-verify", "--quiet"])
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stderr == ""


def test_no_url_answering_prints_the_manual_route(tmp_path, local_spec, dead_url):
    local_spec("cars196", [[("car_ims.tgz", [dead_url], None),
                            ("cars_annos.mat", [dead_url], None)]], None)
    result = runner.invoke(app, ["download", "cars196", "--root", str(tmp_path), "-q"])
    assert result.exit_code == 2
    assert "--archive car_ims.tgz --archive cars_annos.mat" in result.stderr
    assert "Traceback" not in result.output


def test_toy_seed_is_passed_on(tmp_path, monkeypatch):
    seen = []

    def fake(dest: Path, seed: int, reporter) -> None:
        seen.append(seed)
        for c in (1, 2):
            (dest / "images" / f"c{c}").mkdir(parents=True)
            (dest / "images" / f"c{c}" / "0.jpg").write_bytes(b"")
        (dest / "images.txt").write_text("1 c1/0.jpg\n2 c2/0.jpg\n")
        (dest / "image_class_labels.txt").write_text("1 1\n2 2\n")
        (dest / "classes.txt").write_text("1 c1\n2 c2\n")

    monkeypatch.setitem(catalog.DATASETS, "toy",
                        dataclasses.replace(catalog.DATASETS["toy"], generate=fake))
    result = runner.invoke(app, ["download", "toy", "--root", str(tmp_path), "--seed", "7",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert seen == [7]
    assert json.loads(result.stdout)["splits"]["test"] == {"classes": 1, "images": 1}


def test_unknown_dataset_and_help():
    result = runner.invoke(app, ["download", "imagenet"])
    assert result.exit_code == 2
    assert "Choose one of: toy, cub200, cars196, sop" in result.stderr
    helped = runner.invoke(app, ["download", "--help"])
    assert helped.exit_code == 0 and "raml download cars196 --archive" in helped.stdout


def run_raml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raml_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_subprocess_wrong_folder_is_a_clear_error(tmp_path, make):
    make.write_tree(tmp_path / "mine", make.cub_files())  # 12 images, not CUB's 11,788
    done = run_raml("download", "cub200", "--archive", str(tmp_path / "mine"), cwd=tmp_path)
    assert done.returncode == 2
    assert "official one 5,864 of 100" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "data" / "cub200").exists()


@pytest.mark.slow
def test_subprocess_real_toy_generator(tmp_path):
    done = run_raml("download", "toy", "--root", "d", "--seed", "1", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["dataset"] == "toy" and summary["root"] == "d/toy"
    splits = summary["splits"]
    assert splits["train"]["classes"] == splits["test"]["classes"] > 0
    assert splits["val"]["classes"] == splits["train"]["classes"] // 2 + (
        splits["train"]["classes"] % 2)
    loaded = catalog.load_dataset("toy", tmp_path / "d")
    assert loaded.summary() == splits
    assert {s.label for s in loaded.train}.isdisjoint({s.label for s in loaded.test})
    assert all((loaded.root / s.path).stat().st_size > 0 for s in loaded.test[:5])
    marker = json.loads((tmp_path / "d" / "toy" / MARKER_NAME).read_text())
    assert marker["seed"] == 1
    again = run_raml("download", "toy", "--root", "d", "--seed", "1", cwd=tmp_path)
    assert again.returncode == 0 and "already downloaded" in again.stderr
