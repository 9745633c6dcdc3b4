"""The poolings against results computed by hand on small feature maps; files rebuild them."""

import pytest
import torch

from raml_cli.model.files import load_model, read_model_info, save_model
from raml_cli.model.network import NetworkConfig, build_network
from raml_cli.model.pooling import RMAC, GeM, rmac_regions


def _unit(v):
    return v / (v.norm() + 1e-6)


def test_gemmp_has_one_exponent_per_channel():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]])  # [1, 2, 2, 2]
    pool = GeM(p=3.0, channels=2)
    assert pool.p.shape == (2,)
    with torch.no_grad():
        pool.p.copy_(torch.tensor([1.0, 2.0]))
    expected = torch.tensor([[2.5, (30 / 4) ** 0.5]])  # mean; root of the mean square
    torch.testing.assert_close(pool(x), expected)


def test_rmac_regions_of_a_square_map():
    assert rmac_regions(3, 3) == [
        (0, 0, 3),                                      # level 1: side floor(6/2)
        (0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2),      # level 2: side floor(6/3), 2x2
        *[(r, c, 1) for r in (0, 1, 2) for c in (0, 1, 2)],  # level 3: side 1, 3x3
    ]


def test_rmac_regions_of_a_wide_map_add_regions_along_its_width():
    # 2 x 3: level-1 squares of side 2; one extra region along the width (steps 1..6
    # give overlaps 0.5, 0.75, ...: 0.5 is the closest to 0.4).
    regions = rmac_regions(2, 3)
    assert regions[:2] == [(0, 0, 2), (0, 1, 2)]
    assert regions[2:8] == [(r, c, 1) for r in (0, 1) for c in (0, 1, 2)]  # level 2: 2 x 3
    assert regions[8:] == [(r, c, 1) for r in (0, 0, 1) for c in (0, 0, 1, 2)]  # level 3
    # 5 x 2: 3 extra regions along the height (step 1, overlap 0.5; 2 extra: 0.25).
    tall = rmac_regions(5, 2, levels=1)
    assert tall == [(0, 0, 2), (1, 0, 2), (2, 0, 2), (3, 0, 2)]


def test_rmac_sums_unit_region_maxima():
    x = torch.tensor([[[[1.0, 0.2], [0.1, 0.3]], [[0.5, 2.0], [0.4, 0.6]]]])  # [1, 2, 2, 2]
    px = {(r, c): _unit(x[0, :, r, c]) for r in (0, 1) for c in (0, 1)}
    whole = _unit(x[0].amax(dim=(1, 2)))
    # The whole map, level 1 (the whole map again), level 2 (each pixel), level 3 (starts
    # 0, 0, 1 on both axes: pixel (0, 0) four times, (0, 1) and (1, 0) twice, (1, 1) once).
    expected = (2 * whole + 5 * px[0, 0] + 3 * px[0, 1] + 3 * px[1, 0] + 2 * px[1, 1])
    torch.testing.assert_close(RMAC()(x)[0], expected)


def test_gemmp_p_trains_at_100x_and_gem_at_10x():
    for pooling, factor in (("gem", 10), ("gemmp", 100)):
        net = build_network(NetworkConfig("test_resnet", pooling=pooling, whitening=16))
        groups = {g["name"]: g for g in net.parameter_groups(lr=1e-4, weight_decay=1e-6)}
        assert groups["gem_p"]["params"] == [net.pooling.p]
        assert groups["gem_p"]["lr"] == pytest.approx(factor * 1e-4)
        assert groups["gem_p"]["weight_decay"] == 0.0
    rmac = build_network(NetworkConfig("test_resnet", pooling="rmac", whitening=16))
    assert [g["name"] for g in rmac.parameter_groups(1e-4, 0.0)] == ["network"]


@pytest.mark.parametrize("pooling", ["gem", "gemmp", "mac", "spoc", "rmac"])
def test_model_file_rebuilds_each_pooling(tmp_path, pooling):
    torch.manual_seed(0)
    net = build_network(NetworkConfig("test_resnet", pooling=pooling, whitening=16)).eval()
    if pooling == "gemmp":
        with torch.no_grad():  # a trained, per-channel p must survive the round trip
            net.pooling.p.copy_(torch.linspace(1.5, 4.0, net.pooling.p.numel()))
    path = save_model(tmp_path / "m.safetensors", net, resolution=64, role="teacher",
                      dataset="toy", config={})
    assert read_model_info(path).pooling == pooling
    loaded, _ = load_model(path)
    assert type(loaded.pooling) is type(net.pooling)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
