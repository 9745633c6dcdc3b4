"""`raml export` and `raml search MODEL.onnx` through the real command line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.export import read_onnx_info
from raml_cli.model.files import read_model_info

from ..cli_helpers import cli_fails as _fails
from ..cli_helpers import cli_ok as _ok
from ..embed.conftest import make_images

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_raml_export_prints_the_file_its_shapes_metadata_and_check(teacher_file, tmp_path):
    out = tmp_path / "teacher.onnx"
    out.write_bytes(b"an older export")  # replaced, as raml embed and raml index do
    data = json.loads(_ok(["export", teacher_file, "-o", out, "--dynamic-batch", "--json",
                           "--threads", "1"]).stdout)
    model = read_model_info(teacher_file)
    assert data["output"] == str(out) and data["size_bytes"] == out.stat().st_size
    assert data["input"] == {"name": "images", "shape": ["batch", 3, 32, 32]}
    assert data["output_tensor"] == {"name": "embeddings",
                                     "shape": ["batch", model.embedding_dim]}
    assert data["check"]["passed"] and data["check"]["batches"] == [1, 3]
    assert 0 <= data["check"]["max_abs_difference"] <= 1e-4
    assert data["metadata"]["model_sha256"] == model.sha256
    assert data["metadata"]["dynamic_batch"] == "true"
    assert read_onnx_info(out).file_sha256 == data["sha256"]


def test_export_mistakes_get_a_clear_message(teacher_file, tmp_path, monkeypatch):
    _fails(["export", teacher_file, "-o", teacher_file], "same file as the model file")
    _fails(["export", teacher_file, "-o", tmp_path / "x.pt"], "must end in .onnx")
    _fails(["export", tmp_path / "none.safetensors", "-o", tmp_path / "x.onnx"],
           "does not exist")
    result = runner.invoke(app, ["export", str(teacher_file), "-o", str(tmp_path / "x.onnx"),
                                 "--res", "4"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    _fails(["export", teacher_file, "-o", tmp_path / "x.onnx"], "pip install 'raml[onnx]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_raml_export_runs_as_a_program(teacher_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "teacher-40.onnx"
    done = subprocess.run([sys.executable, "-m", "raml_cli", "export", str(teacher_file), "-o",
                           str(out), "--res", "40", "--with-preprocessing", "--dynamic-batch"],
                          env=env, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    # The table, for people (the symbolic batch dimension shown, not taken for markup).
    table = " ".join(done.stdout.split())
    assert "images uint8-nhwc [batch, 40, 40, 3]" in table
    assert "embeddings float32 [batch, 16]" in table
    assert re.search(r"dynamic_batch\W+true", table)
    assert "max |onnxruntime - torch|" in table and "model_sha256" in table
    assert read_onnx_info(out).resolution == 40


@pytest.fixture(scope="module")
def database(teacher_file, tmp_path_factory):
    """The teacher's flat index of 12 images, and 3 query images."""
    root = tmp_path_factory.mktemp("search")
    make_images(root / "db", classes=("001.a", "002.b", "003.c"), per_class=4, seed=0)
    make_images(root / "q", classes=("001.a", "002.b", "003.c"), per_class=1, seed=5)
    _ok(["embed", teacher_file, "--images", root / "db", "-o", root / "db.h5", "-q",
         "--device", "cpu"])
    _ok(["index", root / "db.h5", "-o", root / "db.index", "--kind", "flat", "-q"])
    return root / "db.index", root / "q"


def _search(model, database, *extra):
    index, queries = database
    out = json.loads(_ok(["search", model, "--index", index, "--images", queries, "-k", "5",
                          "--json", "-q", *extra]).stdout)
    ranking = [[r["path"] for r in q["results"]] for q in out["queries"]]
    scores = np.array([[r["score"] for r in q["results"]] for q in out["queries"]])
    return out, ranking, scores


def test_search_with_an_onnx_model_finds_the_same_neighbours(
        teacher_file, float_fixed, uint8_dynamic, database, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reference, ranking, scores = _search(teacher_file, database, "--runtime", "torch")
    assert reference["model"]["runtime"] == "torch"
    for model, extra in ((float_fixed, ()), (uint8_dynamic, ()),
                         (teacher_file, ("--runtime", "onnxruntime")),
                         (teacher_file, ("--device", "cpu")), (teacher_file, ())):
        if not extra and torch.cuda.is_available():
            continue  # --device auto takes the GPU, and with it torch (next test)
        out, found, found_scores = _search(model, database, *extra)
        assert found == ranking, model
        np.testing.assert_allclose(found_scores, scores, atol=1e-4)
        assert out["model"]["runtime"] == "onnxruntime"
        assert out["model"]["sha256"] == reference["model"]["sha256"]
        assert out["model"]["path"] == str(model)
        assert out["model"]["resolution"] == 32
    # The .safetensors model was exported once, into the cache, and that file is reused.
    cached = list((tmp_path / "cache" / "raml" / "onnx").iterdir())
    assert [p.suffix for p in cached] == [".onnx"], cached
    info = read_onnx_info(cached[0])
    assert info.sha256 == reference["model"]["sha256"] and info.dynamic_batch
    stamp = cached[0].stat().st_mtime_ns
    index, queries = database
    log = _ok(["search", teacher_file, "--index", index, "--images", queries, "-k", "1"])
    assert "cached export" in log.stderr and cached[0].stat().st_mtime_ns == stamp


def test_search_falls_back_to_torch_when_the_export_fails(teacher_file, database, tmp_path,
                                                          monkeypatch):
    from raml_cli.export import convert

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(convert, "TOLERANCE", -1.0)  # every check now fails
    from raml_cli.export import engine
    monkeypatch.setattr(engine, "TOLERANCE", -1.0)
    index, queries = database
    args = ["search", teacher_file, "--index", index, "--images", queries, "-k", "1", "--json",
            "--device", "cpu"]
    first = runner.invoke(app, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["model"]["runtime"] == "torch"
    assert any("runs on torch, not onnxruntime" in w for w in out["warnings"])
    folder = tmp_path / "cache" / "raml" / "onnx"
    assert [p.suffix for p in folder.iterdir()] == [".failed"]  # no half-written export
    # The failure is remembered: the next auto search goes to torch without exporting.
    monkeypatch.setattr(engine, "export_model", None)  # would raise if called
    again = json.loads(_ok(args).stdout)
    assert again["model"]["runtime"] == "torch" and "recorded in" in again["warnings"][0]
    # Asked for explicitly, onnxruntime is not silently replaced.
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "TOLERANCE", -1.0)
    _fails([*args, "--runtime", "onnxruntime"], "does not reproduce raml's embeddings")


def test_search_falls_back_to_torch_when_torch_cannot_export(teacher_file, database,
                                                             tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("an operator the exporter does not know")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.onnx, "export", refuse)
    out, _, _ = _search(teacher_file, database, "--device", "cpu")
    assert out["model"]["runtime"] == "torch"
    assert "cannot export this" in out["warnings"][0]
    assert [p.suffix for p in (tmp_path / "cache" / "raml" / "onnx").iterdir()] == [".failed"]
    index, queries = database
    _fails(["search", teacher_file, "--index", index, "--images", queries, "--runtime",
            "onnxruntime"], "cannot export this")
    _fails(["export", teacher_file, "-o", tmp_path / "t.onnx"], "cannot export this")


def test_search_exports_in_memory_when_the_cache_cannot_be_written(
        teacher_file, database, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    out, _, _ = _search(teacher_file, database, "--device", "cpu")
    assert out["model"]["runtime"] == "onnxruntime" and not out["warnings"]
    assert blocker.read_text() == "a file where the cache folder would be"


def test_auto_runtime_is_onnxruntime_on_the_cpu_only(teacher_file, float_fixed, monkeypatch):
    from raml_cli.index.query import choose_runtime

    assert choose_runtime(teacher_file, "auto", "cpu") == "onnxruntime"
    assert choose_runtime(teacher_file, "torch", "cpu") == "torch"
    assert choose_runtime(float_fixed, "auto", "cpu") == "onnxruntime"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU
    assert choose_runtime(teacher_file, "auto", "auto") == "torch"
    assert choose_runtime(teacher_file, "auto", "cpu") == "onnxruntime"
    assert choose_runtime(teacher_file, "onnxruntime", "auto") == "onnxruntime"


def test_search_auto_is_torch_without_the_extra(teacher_file, database, tmp_path,
                                                monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    out, _, _ = _search(teacher_file, database, "--device", "cpu")
    assert out["model"]["runtime"] == "torch"
    assert not (tmp_path / "cache").exists()


def _relabelled(source: Path, dest: Path, **values: str) -> Path:
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in values:
            prop.value = values[prop.key]
    onnx.save(model, str(dest))
    return dest


def test_search_checks_an_onnx_model_from_its_metadata(teacher_file, float_fixed, database,
                                                        tmp_path, monkeypatch):
    index, queries = database
    args = ["--index", index, "--images", queries, "-k", "2"]
    teacher_sha = read_model_info(teacher_file).sha256
    # A student's export: its own sha256, the database's model as its teacher: accepted.
    student = _relabelled(float_fixed, tmp_path / "student.onnx", model_sha256="1" * 64,
                          role="student", teacher_sha256=teacher_sha)
    _ok(["search", student, *args])
    stranger = _relabelled(float_fixed, tmp_path / "stranger.onnx", model_sha256="2" * 64,
                           role="student", teacher_sha256="3" * 64)
    _fails(["search", stranger, *args], "different embedding spaces")
    _fails(["search", float_fixed, *args, "--res", "40"], "exported at 32 px")
    _fails(["search", float_fixed, *args, "--runtime", "torch"], "runs on onnxruntime")
    _fails(["search", teacher_file, *args, "--runtime", "tensorrt"], "--runtime must be one")
    _fails(["search", float_fixed, *args, "--device", "cuda"], "runs on the CPU")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(onnx.helper.make_model(onnx.helper.make_graph(
        [], "empty", [], [])).SerializeToString())
    _fails(["search", foreign, *args], "not an ONNX model written by raml")
    monkeypatch.setitem(sys.modules, "onnx", None)
    _fails(["search", float_fixed, *args], "pip install 'raml[onnx]'")


def test_commands_that_need_the_model_file_say_so_for_an_onnx_file(float_fixed, tmp_path):
    result = CliRunner().invoke(app, ["embed", str(float_fixed), "--images", str(tmp_path),
                                      "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "is an ONNX file" in result.stderr
    assert ".safetensors" in result.stderr and "Traceback" not in result.output


def test_a_damaged_or_foreign_cache_entry_is_exported_again(teacher_file, tmp_path):
    from raml_cli.export.cache import CachedExport, cached_onnx

    sha = read_model_info(teacher_file).sha256
    entry = CachedExport.of(sha, 32, tmp_path)
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    entry.path.write_bytes(b"cut short by a full disk")
    info = cached_onnx(teacher_file, sha, 32, cache_dir=tmp_path)
    assert info.path == entry.path and info.sha256 == sha and info.dynamic_batch
    assert entry.valid_for(sha, 32) is not None
    assert entry.valid_for("0" * 64, 32) is None and entry.valid_for(sha, 40) is None
    assert CachedExport.of(sha, 40, tmp_path).path != entry.path
