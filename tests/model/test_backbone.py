"""Pretrained weights offline must fail fast and say what to do instead."""

import time

import pytest

from raml_cli.errors import DownloadError
from raml_cli.model import backbone
from raml_cli.model.network import NetworkConfig, build_network


def _assert_helpful(err: DownloadError) -> None:
    text = str(err)
    assert "--no-pretrained" in text and "--init-weights FILE" in text


def test_offline_pretrained_fails_fast_with_hf_hub_offline():
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        build_network(NetworkConfig("resnet10t"), init="pretrained")
    assert time.monotonic() - start < 15
    _assert_helpful(info.value)


def test_unreachable_hub_switches_to_offline_mode(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbone, "host_reachable", lambda host, *a, **k: False)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        backbone.create_backbone("resnet10t", pretrained=True)
    assert time.monotonic() - start < 15
    assert "offline" in str(info.value)
    _assert_helpful(info.value)
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_torchvision_pretrained_offline_fails_fast(monkeypatch):
    monkeypatch.setattr(backbone, "host_reachable", lambda host, *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-raml-test")
    with pytest.raises(DownloadError) as info:
        backbone.create_backbone("torchvision/resnet18", pretrained=True)
    _assert_helpful(info.value)


def test_real_connectivity_check_is_quick():
    start = time.monotonic()
    backbone.host_reachable("huggingface.co")
    assert time.monotonic() - start < backbone.CONNECT_TIMEOUT_S + 3
