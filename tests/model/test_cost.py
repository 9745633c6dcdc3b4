"""MACs per image: the trade-off numbers of the paper from our own counter."""

import pytest

from raml_cli.model.cost import latency_ms, macs_per_image
from raml_cli.model.network import NetworkConfig, build_network


def test_macs_scale_with_the_square_of_resolution():
    net = build_network(NetworkConfig("resnet10t", whitening=0))
    small, large = macs_per_image(net, 32), macs_per_image(net, 64)
    assert large == pytest.approx(4 * small, rel=0.02)
    assert latency_ms(net, 32, repeats=2, warmup=1) > 0


@pytest.mark.slow
def test_resnet50_matches_the_paper():
    net = build_network(NetworkConfig("resnet50", whitening=512))
    gmacs = [macs_per_image(net, r) / 1e9 for r in (448, 224, 112)]
    assert gmacs == pytest.approx([16.4, 4.1, 1.1], abs=0.06)
