"""PCA whitening of pooled descriptors: the whitening layer's default initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raml_cli.errors import DataError, InputError
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.model.whitening import (
    check_whitening_init,
    init_whitening_pca,
    pca_whitening,
    pooled_descriptors,
)


def _positive_descriptors(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """Non-negative unit rows sharing a common component, like post-ReLU CNN features."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.rand(n, c, generator=g) * torch.linspace(0.2, 2.0, c) + 0.3, dim=1)


def _mean_pairwise_cosine(v: torch.Tensor) -> float:
    v = F.normalize(v, dim=1)
    s = v @ v.T
    return float((s.sum() - s.diagonal().sum()) / (len(v) * (len(v) - 1)))


def test_pca_whitening_centres_and_decorrelates() -> None:
    x = _positive_descriptors(800, 24)
    weight, bias = pca_whitening(x, 16, shrinkage=0.0)
    y = x @ weight.T + bias
    assert y.mean(dim=0).abs().max() < 1e-5
    assert torch.allclose(torch.cov(y.T), torch.eye(16), atol=1e-4)
    # The leading components are the directions of largest variance: projecting back on the
    # first direction captures more variance than any other single direction kept.
    centred = x - x.mean(dim=0)
    directions = F.normalize(weight, dim=1)
    variances = (centred @ directions.T).var(dim=0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-7)


def test_pca_whitening_removes_the_common_cone() -> None:
    x = _positive_descriptors(400, 64)
    assert _mean_pairwise_cosine(x) > 0.8  # all rows in one narrow cone
    weight, bias = pca_whitening(x, 32)
    assert abs(_mean_pairwise_cosine(x @ weight.T + bias)) < 0.05
    g = torch.Generator().manual_seed(0)
    random_layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        random_layer.weight.copy_(torch.randn(32, 64, generator=g) / 8)
        random_layer.bias.zero_()
    # A random projection keeps the common component (the cone survives).
    assert _mean_pairwise_cosine(random_layer(x).detach()) > 0.3


def test_fewer_descriptors_than_channels_and_more_outputs_than_channels() -> None:
    x = _positive_descriptors(10, 40)  # rank 9 < 40 channels: the ridge keeps it finite
    weight, bias = pca_whitening(x, 48)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    assert weight[:40].abs().sum(dim=1).min() > 0
    assert torch.count_nonzero(weight[40:]) == 0 and torch.count_nonzero(bias[40:]) == 0
    with pytest.raises(DataError, match="at least 2 descriptors"):
        pca_whitening(x[:1], 8)


def test_init_whitening_pca_spreads_a_fresh_network() -> None:
    net = build_network(NetworkConfig("resnet10t", whitening=16))
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(8, 3, 32, 32, generator=g) + torch.linspace(-1, 1, 8)[:, None, None,
                                                                               None]
              for _ in range(4)]
    before = _mean_pairwise_cosine(torch.cat([net(b) for b in images]).detach())
    descriptors = pooled_descriptors(net, images, lambda t: t)
    assert descriptors.shape == (32, net.backbone_dim)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(32), atol=1e-5)
    init_whitening_pca(net, descriptors)
    after = _mean_pairwise_cosine(torch.cat([net(b) for b in images]).detach())
    assert abs(after) < 0.1 < before


def test_whitening_init_choices() -> None:
    assert check_whitening_init(" PCA ") == "pca"
    with pytest.raises(InputError, match="pca, random"):
        check_whitening_init("zca")
