"""Model files: round trip, DESIGN.md metadata, and every way a file can be refused."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from raml_cli.errors import FormatError, InputError
from raml_cli.model.files import (
    METADATA_KEYS,
    file_sha256,
    load_model,
    read_model_info,
    save_model,
)
from raml_cli.model.network import NetworkConfig, build_network


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    net = build_network(NetworkConfig("resnet10t", pooling="gem", whitening=16))
    with torch.no_grad():
        net.pooling.p.fill_(2.5)  # a trained p must survive the round trip
    path = tmp_path_factory.mktemp("model") / "teacher.safetensors"
    save_model(path, net, resolution=64, role="teacher", dataset="toy",
               config={"lr": 1e-4, "root": tmp_path_factory.getbasetemp()})
    return net, path


def test_round_trip_gives_identical_outputs(saved):
    net, path = saved
    loaded, info = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(net(x), loaded(x))
    assert loaded.gem_p == pytest.approx(2.5)
    assert not loaded.training
    assert info.architecture == "resnet10t" and info.pooling == "gem"
    assert info.whitening == 16 and info.embedding_dim == 16
    assert info.resolution == 64 and info.role == "teacher" and info.dataset == "toy"
    assert info.config["lr"] == 1e-4 and info.sha256 == file_sha256(path)
    assert info.mean == (0.485, 0.456, 0.406)


def test_metadata_is_exactly_the_design_table(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}
    assert set(meta) == set(METADATA_KEYS)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "raml-model" and meta["format_version"] == "1"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert meta["teacher_sha256"] == "" and meta["embedding_dim"] == "16"
    assert dtypes == {torch.float32}


def test_student_records_its_teacher(saved, tmp_path):
    net, teacher = saved
    out = save_model(tmp_path / "s.safetensors", net, resolution=32, role="student",
                     dataset="toy", config={}, teacher_sha256=file_sha256(teacher))
    info = read_model_info(out)
    assert info.role == "student" and info.teacher_sha256 == file_sha256(teacher)


def test_save_is_atomic_on_failure(saved, tmp_path):
    net, _ = saved
    with pytest.raises(InputError):
        save_model(tmp_path / "x.safetensors", net, resolution=32, role="coach",
                   dataset="toy", config={})
    assert list(tmp_path.iterdir()) == []


def _rewrite(src, dst, meta=None, tensors=None):
    tensors = tensors if tensors is not None else load_file(str(src))
    with safe_open(str(src), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata.update(meta or {})
    metadata = {k: v for k, v in metadata.items() if v is not None}
    save_file(tensors, str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize("meta,needle", [
    ({"format": "other-model"}, "not a raml model"),
    ({"format": None}, "no `format`"),
    ({"format_version": "2"}, "format_version '2'"),
    ({"pooling": None}, "lacks the metadata key(s) pooling"),
    ({"teacher_sha256": None, "dataset": None}, "teacher_sha256, dataset"),
    ({"mean": "[1, 2]"}, "malformed"),
    ({"whitening": "8"}, "do not fit its metadata"),
    ({"architecture": "no_such_net"}, "cannot build"),
    ({"role": "coach"}, "role 'coach'"),
])
def test_bad_metadata_is_refused(saved, tmp_path, meta, needle):
    _, path = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=meta)
    with pytest.raises(FormatError) as info:
        load_model(bad)
    assert needle in str(info.value)


def test_tensor_shape_mismatch_is_refused(saved, tmp_path):
    _, path = saved
    tensors = load_file(str(path))
    tensors["whitening.weight"] = torch.zeros(16, 100)
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(FormatError, match="shape mismatch.*whitening.weight"):
        load_model(bad)


def test_missing_tensor_is_refused(saved, tmp_path):
    _, path = saved
    tensors = load_file(str(path))
    del tensors["pooling.p"]
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(FormatError, match="missing tensor.*pooling.p"):
        load_model(bad)


def test_non_safetensors_files_are_refused(tmp_path, saved):
    net, _ = saved
    pth = tmp_path / "model.pth"
    torch.save(net.state_dict(), pth)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for file in (pth, junk, empty):
        with pytest.raises(FormatError, match="not a safetensors file"):
            load_model(file)
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
