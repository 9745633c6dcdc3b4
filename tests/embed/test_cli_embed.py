"""`raml embed` on the command line: CliRunner for the cases, one real subprocess."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.evaluate import space_spread
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.store import read_embeddings

runner = CliRunner()


def test_images_folder_to_json_summary(model_file, image_dir, tmp_path):
    root, samples = image_dir
    out = tmp_path / "db.h5"
    result = runner.invoke(app, ["embed", str(model_file), "--images", str(root), "-o",
                                 str(out), "--device", "cpu", "--batch-size", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_rows"] == 8 and summary["resolution"] == 48
    assert summary["split"] == "images" and summary["num_skipped"] == 0
    data = read_embeddings(out)
    assert sorted(data.labels.tolist()) == [1, 1, 1, 1, 2, 2, 2, 2]


def test_dataset_csv_split_and_resolution(model_file, image_dir, tmp_path):
    root, samples = image_dir
    csv = root / "data.csv"
    csv.write_text("path,label,split\n" + "".join(
        f"{s.path},{s.label},{'test' if s.label == 2 else 'train'}\n" for s in samples))
    out = tmp_path / "q.h5"
    result = runner.invoke(app, ["embed", str(model_file), "--dataset", str(csv), "--split",
                                 "test", "--res", "32", "-o", str(out), "--device", "cpu",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    data = read_embeddings(out)
    assert data.attrs["resolution"] == 32 and data.attrs["split"] == "test"
    assert set(data.labels.tolist()) == {2} and len(data.paths) == 4


def test_user_errors_are_one_message_and_exit_2(model_file, image_dir, tmp_path):
    root, _ = image_dir
    cases = [
        (["embed", str(model_file), "-o", str(tmp_path / "x.h5")], "exactly one input"),
        (["embed", str(model_file), "--images", str(root), "--dataset", "toy", "-o",
          str(tmp_path / "x.h5")], "exactly one input"),
        (["embed", str(tmp_path / "nope.safetensors"), "--images", str(root), "-o",
          str(tmp_path / "x.h5")], "does not exist"),
        (["embed", str(model_file), "--images", str(root), "-o", str(tmp_path / "x.h5"),
          "--device", "cuda:7"], "--device"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x.h5").exists()


def test_a_bad_model_file_fails_before_the_images_are_scanned(tmp_path, monkeypatch):
    import raml_cli.embed as embed_package

    def must_not_scan(*args, **kwargs):
        raise AssertionError("images were listed before the model file was checked")

    monkeypatch.setattr(embed_package, "collect_images", must_not_scan)
    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_text("this is not a model")
    result = runner.invoke(app, ["embed", str(not_a_model), "--images", str(tmp_path), "-o",
                                 str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "safetensors" in result.stderr


def test_help_shows_an_example():
    result = runner.invoke(app, ["embed", "--help"])
    assert result.exit_code == 0 and "raml embed teacher.safetensors" in result.stdout


@pytest.mark.slow
def test_subprocess_with_skip_bad(model_file, image_dir, tmp_path):
    root, _ = image_dir
    (root / "001.crow" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "db.h5"
    base = [sys.executable, "-m", "raml_cli", "embed", str(model_file), "--images", str(root),
            "-o", str(out), "--device", "cpu", "--json"]
    failed = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "broken.jpg" in failed.stderr
    assert failed.stdout == "" and not out.exists()
    done = subprocess.run(base + ["--skip-bad", "--resume"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["skipped"] == ["001.crow/broken.jpg"] and summary["num_rows"] == 8


def test_the_spread_of_the_written_file_is_reported(model_file, image_dir, tmp_path):
    root, _ = image_dir
    out = tmp_path / "db.h5"
    args = ["embed", str(model_file), "--images", str(root), "-o", str(out), "--device", "cpu"]
    summary = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    expected = space_spread(read_embeddings(out).embeddings)
    assert summary["space"] == pytest.approx({"mean_cosine": expected.mean_cosine,
                                              "nn_cosine": expected.nn_cosine})
    logged = runner.invoke(app, [*args, "-o", str(tmp_path / "again.h5")])
    assert logged.exit_code == 0, logged.output
    message = " ".join(logged.stderr.split())
    assert (f"mean pairwise cosine {expected.mean_cosine:.4f}, nearest-neighbour cosine "
            f"{expected.nn_cosine:.4f} (8 sampled rows" in message)


@pytest.fixture
def collapsed_model(tmp_path):
    """A model whose whitening bias outweighs everything: every image maps near one axis."""
    torch.manual_seed(0)
    network = build_network(NetworkConfig("resnet10t", whitening=16))
    with torch.no_grad():
        network.whitening.bias.zero_()
        network.whitening.bias[0] = 50.0
    return save_model(tmp_path / "collapsed.safetensors", network, resolution=48,
                      role="teacher", dataset="toy", config={"res": 48})


def test_a_collapsed_file_is_warned_about(collapsed_model, image_dir, tmp_path):
    root, _ = image_dir
    out = tmp_path / "db.h5"
    result = runner.invoke(app, ["embed", str(collapsed_model), "--images", str(root), "-o",
                                 str(out), "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["space"]["mean_cosine"] > 0.9
    message = " ".join(result.stderr.split())
    assert f"the space of {out} is collapsed" in message and "narrow cone" in message
    assert "asymmetric search will be fragile" in message and "Retrain the teacher" in message


def test_the_spread_is_read_back_with_decoding_workers(model_file, image_dir, tmp_path):
    # Worker processes forked while the file was open share its HDF5 lock; reading the
    # file back must not trip over them.
    root, _ = image_dir
    out = tmp_path / "db.h5"
    result = runner.invoke(app, ["embed", str(model_file), "--images", str(root), "-o",
                                 str(out), "--device", "cpu", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["space"]["mean_cosine"] == pytest.approx(
        space_spread(read_embeddings(out).embeddings).mean_cosine)
