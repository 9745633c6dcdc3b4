"""`raml info`: metadata and the per-resolution cost table."""

import json

import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network

runner = CliRunner()


@pytest.mark.slow
def test_info_json_and_table(tmp_path):
    torch.manual_seed(0)
    path = save_model(tmp_path / "s.safetensors",
                      build_network(NetworkConfig("resnet10t", whitening=8)), resolution=32,
                      role="student", dataset="toy", config={"query_res": 32},
                      teacher_sha256="ab" * 32)
    result = runner.invoke(app, ["info", str(path), "--res", "32,64", "--repeats", "1",
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["role"] == "student" and info["teacher_sha256"] == "ab" * 32
    assert info["config"] == {"query_res": 32} and info["embedding_dim"] == 8
    cost = {row["resolution"]: row for row in info["cost"]}
    assert cost[64]["macs"] > 3.9 * cost[32]["macs"] and cost[64]["relative_macs"] == 1.0
    assert cost[32]["latency_ms"] > 0
    table = runner.invoke(app, ["info", str(path), "--res", "32", "--no-latency"])
    assert table.exit_code == 0 and "GMACs" in table.stdout and "student" in table.stdout
    bad = runner.invoke(app, ["info", str(path), "--res", "a,b"])
    assert bad.exit_code == 2 and "comma-separated" in bad.stderr


def test_info_costs_a_multiscale_query(tmp_path):
    from raml_cli.model.cost import macs_per_image

    net = build_network(NetworkConfig("test_resnet", whitening=8))
    path = save_model(tmp_path / "t.safetensors", net, resolution=64, role="teacher",
                      dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "64", "--scales", "1,0.5",
                                 "--no-latency", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["cost"][0]
    assert row["scales"] == [1.0, 0.5]
    assert row["multiscale_macs"] == macs_per_image(net, 64) + macs_per_image(net, 32)
    table = runner.invoke(app, ["info", str(path), "--res", "64", "--scales", "1,0.5",
                                "--no-latency", "--device", "cpu"])
    assert table.exit_code == 0 and "scales 1,0.5" in table.stdout


def test_info_times_batches_against_the_bare_product(tmp_path):
    net = build_network(NetworkConfig("test_resnet", whitening=8))
    path = save_model(tmp_path / "t.safetensors", net, resolution=32, role="teacher",
                      dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "32", "--batch", "1,4",
                                 "--repeats", "2", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["bare_gflops"] > 0
    assert out["inference"]["folded_batchnorms"] == 15 and out["inference"]["channels_last"]
    row = out["cost"][0]
    timings = {(t["runtime"], t["batch"]): t for t in row["timings"]}
    assert set(timings) == {("torch", 1), ("torch", 4)}
    four = timings[("torch", 4)]
    assert four["images_per_s"] == pytest.approx(4000 / four["ms"])
    assert four["gflops"] == pytest.approx(2 * row["macs"] * 4 / (four["ms"] / 1000) / 1e9)
    assert four["fraction_of_bare"] == pytest.approx(four["gflops"] / out["bare_gflops"])
    assert row["latency_ms"] == timings[("torch", 1)]["ms"]
    table = runner.invoke(app, ["info", str(path), "--res", "32", "--batch", "2",
                                "--repeats", "1", "--device", "cpu"])
    assert table.exit_code == 0, table.output
    assert "GFLOP/s" in table.stdout and "15 BatchNorm folded" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch"),
    (["--batch", "5000"], "at most 1024"),
    (["--runtime", "tensorrt"], "--runtime takes"),
])
def test_info_refuses_bad_timing_options(tmp_path, args, message):
    path = save_model(tmp_path / "t.safetensors",
                      build_network(NetworkConfig("test_resnet", whitening=8)), resolution=32,
                      role="teacher", dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "32", "--device", "cpu", *args])
    assert result.exit_code == 2 and message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_info_times_torch_and_onnxruntime_side_by_side(tmp_path):
    pytest.importorskip("onnxruntime")
    path = save_model(tmp_path / "t.safetensors",
                      build_network(NetworkConfig("test_resnet", whitening=8)), resolution=32,
                      role="teacher", dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "32", "--runtime",
                                 "torch,onnxruntime", "--repeats", "2", "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    timings = json.loads(result.stdout)["cost"][0]["timings"]
    assert [(t["runtime"], t["batch"]) for t in timings] == [("torch", 1), ("onnxruntime", 1)]
    assert all(t["ms"] > 0 and t["gflops"] > 0 for t in timings)


def test_info_onnxruntime_without_the_extra_names_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    path = save_model(tmp_path / "t.safetensors",
                      build_network(NetworkConfig("test_resnet", whitening=8)), resolution=32,
                      role="teacher", dataset="toy", config={})
    result = runner.invoke(app, ["info", str(path), "--res", "32", "--runtime", "onnxruntime",
                                 "--device", "cpu"])
    assert result.exit_code == 2 and "raml[onnx]" in result.stderr
    assert "Traceback" not in result.output
