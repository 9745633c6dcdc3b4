"""The embedding network: shapes, unit rows, pooling, frozen BatchNorm, parameter groups."""

import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.model.network import EmbeddingNetwork, NetworkConfig, build_network
from raml_cli.model.pooling import MAC, GeM, SPoC


@pytest.fixture(scope="module")
def net() -> EmbeddingNetwork:
    torch.manual_seed(0)
    return build_network(NetworkConfig("resnet10t", whitening=32))


def test_forward_gives_unit_rows_of_whitening_size(net):
    out = net(torch.randn(3, 3, 48, 48))
    assert out.shape == (3, 32)
    assert net.embedding_dim == 32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_without_whitening_the_size_is_the_backbone_width():
    net = build_network(NetworkConfig("resnet10t", whitening=0))
    assert net.whitening is None
    assert net.embedding_dim == net.backbone_dim == 512
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 512)


@pytest.mark.parametrize("arch", ["vgg11", "mobilenetv3_small_050"])
def test_backbones_with_pre_logits_layers_feed_the_whitening(arch):
    # Their feature map after the layers that still run with num_classes=0 is wider
    # than timm's num_features (VGG: 4096 vs 512).
    net = build_network(NetworkConfig(arch, whitening=0)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, net.embedding_dim)
    whitened = build_network(NetworkConfig(arch, whitening=16)).eval()
    with torch.no_grad():
        assert whitened(torch.randn(1, 3, 64, 64)).shape == (1, 16)


def test_mean_std_default_from_backbone_config():
    assert build_network(NetworkConfig("resnet10t", whitening=0)).config.mean == (
        0.485, 0.456, 0.406)
    lite = build_network(NetworkConfig("tf_efficientnet_lite0", whitening=0))
    assert lite.config.mean == (0.5, 0.5, 0.5) and lite.config.std == (0.5, 0.5, 0.5)
    custom = build_network(NetworkConfig("resnet10t", whitening=0, mean=(0, 0, 0), std=(1, 1, 1)))
    assert custom.config.std == (1.0, 1.0, 1.0)


def test_pooling_definitions():
    x = torch.rand(2, 4, 3, 5) + 0.1
    torch.testing.assert_close(MAC()(x), x.amax(dim=(2, 3)))
    torch.testing.assert_close(SPoC()(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    gem3 = GeM(p=3.0)(x)
    torch.testing.assert_close(gem3, (x ** 3).mean(dim=(2, 3)) ** (1 / 3))
    assert (gem3 > SPoC()(x)).all() and (gem3 < MAC()(x)).all()


@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem", "gemmp", "rmac"])
def test_every_pooling_builds(pooling):
    net = build_network(NetworkConfig("resnet10t", pooling=pooling, whitening=8))
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 8)
    assert (net.gem_p is None) == (pooling not in ("gem", "gemmp"))


def test_batchnorm_stays_in_eval_mode_under_train(net):
    net.train()
    try:
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and not any(m.training for m in norms)
        assert net.training and net.whitening.training
        before = norms[0].running_mean.clone()
        net(torch.randn(2, 3, 32, 32) * 5 + 3)
        torch.testing.assert_close(norms[0].running_mean, before)
    finally:
        net.eval()


def test_gradients_reach_gem_p_and_parameter_groups(net):
    groups = net.parameter_groups(lr=1e-4, weight_decay=1e-6)
    by_name = {g["name"]: g for g in groups}
    assert by_name["gem_p"]["params"] == [net.pooling.p]
    assert by_name["gem_p"]["lr"] == pytest.approx(1e-3)
    assert by_name["gem_p"]["weight_decay"] == 0.0
    assert by_name["network"]["weight_decay"] == 1e-6
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    net.train()
    net.zero_grad()
    net(torch.randn(2, 3, 96, 96)).sum().backward()  # 3x3 map: p matters
    assert net.pooling.p.grad is not None and net.pooling.p.grad.abs().item() > 0
    net.eval()
    torch.optim.AdamW(groups)  # accepted as is


def test_torchvision_backbones_keep_their_parameter_names():
    net = build_network(NetworkConfig("torchvision/resnet18", whitening=16))
    names = set(net.state_dict())
    assert "backbone.layer1.0.conv1.weight" in names and "backbone.fc.weight" not in names
    mobile = build_network(NetworkConfig("torchvision/mobilenet_v3_small", whitening=0))
    assert mobile(torch.randn(1, 3, 64, 64)).shape == (1, 576)


@pytest.mark.parametrize("config,needle", [
    (dict(architecture="resnet5O"), "resnet50"),
    (dict(architecture="torchvision/resnet5"), "torchvision/resnet50"),
    (dict(architecture="resnet10t", pooling="avg"), "gem, gemmp, mac, spoc, rmac"),
    (dict(architecture="resnet10t", whitening=-1), "whitening"),
])
def test_bad_configs_name_the_valid_choices(config, needle):
    with pytest.raises(InputError) as info:
        build_network(NetworkConfig(**config))
    assert needle in str(info.value)
