"""`export_model` and the ONNX file: what onnxruntime computes from the written file equals
raml's own rows, the metadata reads back, and every mistake gets a clear message."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from raml_cli.data.transforms import eval_resize_size, eval_transform
from raml_cli.errors import ExportError, FormatError, InputError
from raml_cli.export import (
    OnnxEncoder,
    export_model,
    onnxruntime_latency_ms,
    read_onnx_info,
)
from raml_cli.export import engine as export_engine
from raml_cli.model.files import load_model, read_model_info

R = 32  # the teacher_file fixture's resolution


def _torch_rows(model: Path, batch: np.ndarray) -> np.ndarray:
    network, _ = load_model(model)
    with torch.inference_mode():
        return network(torch.from_numpy(batch)).numpy()


def _plain_session(path: Path) -> onnxruntime.InferenceSession:
    """The file as any onnxruntime user opens it, without raml."""
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_float_export_gives_raml_s_rows_and_its_metadata(teacher_file, float_fixed):
    model = read_model_info(teacher_file)
    session = _plain_session(float_fixed)
    (graph_in,), (graph_out,) = session.get_inputs(), session.get_outputs()
    assert (graph_in.name, graph_in.shape, graph_in.type) == \
        ("images", [1, 3, R, R], "tensor(float)")
    assert (graph_out.name, graph_out.shape) == ("embeddings", [1, model.embedding_dim])
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((1, 3, R, R), dtype=np.float32)
    rows = session.run(None, {"images": batch})[0]
    np.testing.assert_allclose(rows, _torch_rows(teacher_file, batch), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)

    props = {p.key: p.value for p in onnx.load(str(float_fixed)).metadata_props}
    assert props["format"] == "raml-onnx" and props["model_sha256"] == model.sha256
    assert props["resolution"] == str(R) and props["role"] == "teacher"
    assert props["teacher_sha256"] == "" and props["architecture"] == "test_resnet"
    assert json.loads(props["mean"]) == list(model.mean)
    assert json.loads(props["std"]) == list(model.std)
    assert props["input_format"] == "float32-nchw" and props["dynamic_batch"] == "false"
    assert props["embedding_dim"] == str(model.embedding_dim) and props["raml_version"]

    info = read_onnx_info(float_fixed)
    assert info.sha256 == model.sha256 and info.resolution == R and not info.dynamic_batch
    assert info.input_shape == [1, 3, R, R] and info.output_shape == [1, model.embedding_dim]
    assert info.size_bytes == float_fixed.stat().st_size and info.opset == 18
    # A fixed-batch file still encodes any number of images (one run each).
    encoder, _ = OnnxEncoder.open(float_fixed, threads=1)
    three = rng.standard_normal((3, 3, R, R), dtype=np.float32)
    np.testing.assert_allclose(encoder(three), _torch_rows(teacher_file, three), atol=1e-4)
    with pytest.raises(InputError, match=r"shape \['B', 3, 32, 32\]"):
        encoder(three[:, :, :16])


def test_the_uint8_export_normalises_inside_as_raml_s_evaluation_does(
        teacher_file, uint8_dynamic, tmp_path):
    session = _plain_session(uint8_dynamic)
    assert session.get_inputs()[0].shape == ["batch", R, R, 3]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    network, info = load_model(teacher_file)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((50, 70), (64, 41), (45, 45))]
    # What a server does: the documented resize and crop, then the pixels as they are.
    crop = T.Compose([T.Resize(eval_resize_size(R), interpolation=T.InterpolationMode.BILINEAR,
                               antialias=True), T.CenterCrop(R)])
    pixels = np.stack([np.asarray(crop(image)) for image in images])
    served = session.run(None, {"images": pixels})[0]
    # What raml does: its evaluation transform, then the torch network.
    transform = eval_transform(R, info.mean, info.std)
    with torch.inference_mode():
        ours = network(torch.stack([transform(image) for image in images])).numpy()
    assert served.shape == (3, info.embedding_dim)
    np.testing.assert_allclose(served, ours, atol=1e-4)
    meta = read_onnx_info(uint8_dynamic)
    assert meta.input_format == "uint8-nhwc" and meta.dynamic_batch
    assert meta.input_shape == ["batch", R, R, 3] and meta.output_shape[0] == "batch"


def test_an_export_that_differs_from_torch_writes_nothing(teacher_file, float_fixed, tmp_path,
                                                          monkeypatch):
    # A converter that gets one weight wrong: the check must catch it before the rename.
    graph = onnx.load(str(float_fixed))
    bias = next(t for t in graph.graph.initializer if t.name.endswith("whitening.bias"))
    values = onnx.numpy_helper.to_array(bias) + 0.05
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    del graph.metadata_props[:]
    monkeypatch.setattr(export_engine, "to_onnx", lambda *args, **kwargs: graph)
    out = tmp_path / "student.onnx"
    out.write_bytes(b"the previous file")
    with pytest.raises(ExportError, match="nothing was written") as err:
        export_model(teacher_file, out)
    assert "differ from torch's by up to" in str(err.value)
    assert out.read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]


def test_bad_requests_are_refused_before_any_work(teacher_file, tmp_path):
    with pytest.raises(InputError, match="same file as the model file"):
        export_model(teacher_file, teacher_file)
    link = tmp_path / "link.onnx"
    link.symlink_to(teacher_file)
    with pytest.raises(InputError, match="same file as the model file"):
        export_model(teacher_file, link)
    link.unlink()
    with pytest.raises(InputError, match=r"must end in \.onnx"):
        export_model(teacher_file, tmp_path / "student.bin")
    with pytest.raises(InputError, match="between 8 and 4096"):
        export_model(teacher_file, tmp_path / "big.onnx", res=5000)
    with pytest.raises(InputError, match="does not exist"):
        export_model(tmp_path / "missing.safetensors", tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_a_missing_extra_names_it(teacher_file, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # what `import` finds when not installed
    with pytest.raises(InputError, match=r"pip install 'raml\[onnx\]'") as err:
        export_model(teacher_file, tmp_path / "x.onnx")
    assert repr(package) in str(err.value)
    assert not (tmp_path / "x.onnx").exists()


def test_foreign_onnx_files_are_refused(tmp_path, float_fixed):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(FormatError, match="not an ONNX model written by raml"):
        read_onnx_info(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not protobuf at all " * 10)
    with pytest.raises(FormatError, match="ONNX"):
        read_onnx_info(garbage)
    # raml's metadata on a graph that does not fit it (edited by hand).
    edited = onnx.load(str(float_fixed))
    for prop in edited.metadata_props:
        if prop.key == "resolution":
            prop.value = "64"
    onnx.save(edited, str(tmp_path / "edited.onnx"))
    with pytest.raises(FormatError, match="does not fit its metadata"):
        read_onnx_info(tmp_path / "edited.onnx")
    with pytest.raises(InputError, match="does not exist"):
        read_onnx_info(tmp_path / "missing.onnx")


def test_onnxruntime_latency_is_measured_per_batch(teacher_file):
    network, _ = load_model(teacher_file)
    ms = onnxruntime_latency_ms(network, R, batch_size=2, repeats=3, threads=1)
    assert 0 < ms < 10_000
    with pytest.raises(InputError, match="at least 1"):
        onnxruntime_latency_ms(network, R, batch_size=0)
