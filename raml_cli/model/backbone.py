"""Backbones: a CNN with its classifier and global pooling removed, giving a feature map.

Two sources, one factory (:func:`create_backbone`):

- any **timm** model name (``resnet50``, ``tf_efficientnet_lite0``, ``convnext_tiny`` ...),
  built with ``timm.create_model(name, num_classes=0, global_pool="")``;
- **torchvision**'s ResNet / ResNeXt / Wide-ResNet, MobileNet and EfficientNet families,
  named with the prefix ``torchvision/`` (``torchvision/resnet50``,
  ``torchvision/mobilenet_v3_large``, ``torchvision/efficientnet_b0``). The prefix keeps the
  two namespaces apart (timm also has a ``resnet50``, with other weights).

Parameter names are those of the source library (``layer1.0.conv1.weight`` for a
torchvision ResNet, ``blocks.0.0.conv_dw.weight`` for a timm EfficientNet), so a state dict
saved by that library loads by name (:mod:`raml_cli.model.weights`).

ImageNet weights (``pretrained=True``) come from a hub: timm fetches them from the Hugging
Face Hub, torchvision from download.pytorch.org, both caching them locally. Offline, a
missing cached file fails within seconds with a message naming ``--no-pretrained`` and
``--init-weights FILE``, instead of timm's retries (about 47 s).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from torch import nn

from raml_cli.errors import DownloadError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_PREFIX = "torchvision/"
TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet", "efficientnet")
CONNECT_TIMEOUT_S = 3.0

_NO_WEIGHTS_HINT = (
    "Use --no-pretrained to start from random weights, or --init-weights FILE to load a "
    "local safetensors or PyTorch state dict of the backbone."
)


@dataclass
class Backbone:
    """A feature extractor and what the rest of the network needs to know about it.

    Attributes:
        module: maps ``[B, 3, H, W]`` to a feature map ``[B, C, h, w]``.
        num_features: ``C``, the channel count of the feature map.
        mean, std: the per-channel input normalisation its weights expect.
    """

    module: nn.Module
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def torchvision_names() -> list[str]:
    """Every supported torchvision backbone, with the ``torchvision/`` prefix."""
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    return [TORCHVISION_PREFIX + n for n in sorted(names) if n.startswith(TORCHVISION_FAMILIES)]


def available_architectures() -> list[str]:
    """Every name :func:`create_backbone` accepts (timm names, then torchvision ones)."""
    import timm

    return list(timm.list_models()) + torchvision_names()


def check_architecture(name: str) -> None:
    """Raise :class:`InputError` naming close valid choices when ``name`` is unknown."""
    import timm

    if name.startswith(TORCHVISION_PREFIX):
        known = torchvision_names()
        if name in known:
            return
    elif timm.is_model(name):
        return
    else:
        known = available_architectures()
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
    suggestion = f"Close matches: {', '.join(close)}. " if close else ""
    families = ", ".join(f"{TORCHVISION_PREFIX}{f}*" for f in TORCHVISION_FAMILIES)
    raise InputError(
        f"Unknown backbone architecture {name!r}. {suggestion}Any timm model name works "
        f"(list them with `python -c \"import timm; print(timm.list_models('resnet*'))\"`), "
        f"and torchvision's {families} with the `{TORCHVISION_PREFIX}` prefix, e.g. "
        f"{TORCHVISION_PREFIX}resnet50."
    )


def create_backbone(name: str, pretrained: bool = False) -> Backbone:
    """Build the backbone ``name`` with or without ImageNet weights.

    Args:
        name: a timm model name, or ``torchvision/<name>`` (see the module docstring).
        pretrained: load the library's default ImageNet weights (needs the hub or a cache).

    Raises:
        InputError: unknown name (with close matches).
        DownloadError: ``pretrained=True`` and the weights can be neither found in the
            local cache nor downloaded.

    >>> bb = create_backbone("resnet10t")
    >>> bb.num_features
    512
    """
    check_architecture(name)
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_backbone(name[len(TORCHVISION_PREFIX):], pretrained)
    return _timm_backbone(name, pretrained)


def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    import timm

    if not pretrained:
        module = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    else:
        cfg = timm.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise InputError(f"timm has no pretrained weights for {name!r}. {_NO_WEIGHTS_HINT}")
        host = _hub_host()
        with _offline_unless_reachable(host) as offline:
            try:
                module = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
            except Exception as err:  # timm / huggingface_hub / urllib raise many types
                where = "offline (no network or HF_HUB_OFFLINE=1)" if offline else f"from {host}"
                raise DownloadError(
                    f"Could not get the ImageNet weights of {name!r} {where}: they are not in "
                    f"the local cache and could not be downloaded ({type(err).__name__}: "
                    f"{_first_line(err)}). {_NO_WEIGHTS_HINT}"
                ) from err
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    module = _ChannelsFirst(module) if getattr(module, "output_fmt", "NCHW") == "NHWC" else module
    return Backbone(module, int(_num_features(module)), mean, std)  # type: ignore[arg-type]


class _ChannelsFirst(nn.Module):
    """Wrap a timm model whose feature map is NHWC (e.g. Swin) so it gives NCHW."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).permute(0, 3, 1, 2)


def _num_features(module: nn.Module) -> int:
    # timm's head_hidden_size is the channel count after pre-logits layers that still run
    # with num_classes=0 (VGG's 4096-channel ConvMlp); elsewhere it equals num_features.
    for name in ("head_hidden_size", "num_features"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    last = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not last:
        raise InputError("Cannot tell the feature size of this backbone; use a CNN.")
    return last[-1].out_channels


class TorchvisionResNetFeatures(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``; same parameter names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(model, part))
        self.num_features = int(model.fc.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchvisionFeatures(nn.Module):
    """A torchvision MobileNet / EfficientNet reduced to its ``features`` stack."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features = model.features
        self.num_features = _num_features(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_backbone(name: str, pretrained: bool) -> Backbone:
    import torchvision.models as tvm

    if not pretrained:
        model = tvm.get_model(name, weights=None)
    else:
        with _offline_unless_reachable("download.pytorch.org") as offline:
            try:
                if offline and not _torchvision_cached(name):
                    raise ConnectionError("download.pytorch.org is unreachable")
                model = tvm.get_model(name, weights="DEFAULT")
            except Exception as err:
                raise DownloadError(
                    f"Could not get the ImageNet weights of torchvision/{name}: they are not in "
                    f"the torch hub cache ({torch.hub.get_dir()}/checkpoints) and could not be "
                    f"downloaded ({type(err).__name__}: {_first_line(err)}). {_NO_WEIGHTS_HINT}"
                ) from err
    module: nn.Module
    module = TorchvisionResNetFeatures(model) if hasattr(model, "layer4") else \
        TorchvisionFeatures(model)
    return Backbone(module, int(module.num_features), IMAGENET_MEAN, IMAGENET_STD)


def _torchvision_cached(name: str) -> bool:
    import torchvision.models as tvm

    url = tvm.get_model_weights(name).DEFAULT.url
    filename = os.path.basename(urlparse(url).path)
    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", filename))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else "no details"


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _env_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def host_reachable(host: str, port: int = 443, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """A fast connectivity check: can a TCP connection to ``host:port`` open in time?"""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # the proxy decides; let the library try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_unless_reachable(host: str) -> Iterator[bool]:
    """Yield True (and put huggingface_hub in offline mode) when ``host`` cannot be reached.

    Offline mode still serves cached weights, but fails at once for missing ones instead
    of retrying for about 47 s.
    """
    if _env_offline():
        yield True
        return
    if host_reachable(host):
        yield False
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        yield True
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = previous
