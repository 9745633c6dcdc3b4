"""The embedding network shared by teacher and student (METHOD.md, "The embedding network").

    image [B, 3, H, W] (normalised with ``config.mean`` / ``config.std``)
      -> backbone feature map [B, C, h, w]
      -> global pooling (GeM, per-channel GeM, MAC, SPoC, R-MAC)  [B, C]
      -> L2 normalisation
      -> optional whitening: Linear(C, d) with bias              [B, d]
      -> L2 normalisation                                        unit rows

BatchNorm layers stay in eval mode even under ``.train()``: their running statistics
are frozen (the batches of metric learning are small and class-structured), while their
affine weights still train.

>>> net = build_network(NetworkConfig("resnet10t", whitening=64))
>>> net(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 64])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from raml_cli.errors import InputError
from raml_cli.model.backbone import create_backbone
from raml_cli.model.pooling import POOLING_NAMES, GeM, create_pooling

#: The learning-rate multiplier of GeM's p: one p (``gem``) or one per channel (``gemmp``).
GEM_LR_MULTIPLIER = {"gem": 10.0, "gemmp": 100.0}


@dataclass
class NetworkConfig:
    """Everything needed to rebuild an :class:`EmbeddingNetwork` (stored in model files).

    Attributes:
        architecture: a timm model name or ``torchvision/<name>``.
        pooling: ``gem``, ``gemmp``, ``mac``, ``spoc`` or ``rmac``.
        whitening: output size of the whitening layer; ``0`` for none (then the
            embedding size is the backbone's channel count).
        gem_p: the initial GeM exponent (``gem`` and ``gemmp``).
        mean, std: input normalisation; ``None`` means the backbone's pretrained
            configuration (ImageNet otherwise), filled in by :func:`build_network`.
    """

    architecture: str
    pooling: str = "gem"
    whitening: int = 512
    gem_p: float = 3.0
    mean: tuple[float, float, float] | None = field(default=None)
    std: tuple[float, float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        self.pooling = str(self.pooling).strip().lower()
        if self.pooling not in POOLING_NAMES:
            raise InputError(f"Unknown pooling {self.pooling!r}. Choose one of: "
                             f"{', '.join(POOLING_NAMES)}.")
        if int(self.whitening) < 0:
            raise InputError(f"--whitening must be 0 (none) or a positive size, got "
                             f"{self.whitening}.")
        self.whitening = int(self.whitening)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise InputError(f"{name} must hold 3 numbers (R, G, B), got {value}.")
                setattr(self, name, value)
        if self.std is not None and min(self.std) <= 0:
            raise InputError(f"std values must be positive, got {self.std}.")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        out = asdict(self)
        out["mean"] = list(self.mean) if self.mean is not None else None
        out["std"] = list(self.std) if self.std is not None else None
        return out


class EmbeddingNetwork(nn.Module):
    """backbone -> pooling -> L2 -> optional whitening -> L2; ``[B, 3, H, W] -> [B, D]``.

    Attributes:
        config: the :class:`NetworkConfig` (with ``mean``/``std`` resolved).
        backbone: the feature extractor.
        pooling: :class:`GeM` (one p, or one per channel), MAC, SPoC or RMAC.
        whitening: ``nn.Linear(C, d)`` or ``None``.
        backbone_dim: ``C``.
        embedding_dim: ``D`` (``d`` with whitening, else ``C``).
    """

    def __init__(self, config: NetworkConfig, backbone: nn.Module, backbone_dim: int) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.backbone_dim = int(backbone_dim)
        self.pooling = create_pooling(config.pooling, config.gem_p, self.backbone_dim)
        self.whitening = nn.Linear(backbone_dim, config.whitening, bias=True) \
            if config.whitening else None

    @property
    def embedding_dim(self) -> int:
        return self.config.whitening or self.backbone_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone feature map ``[B, C, h, w]`` of normalised images ``[B, 3, H, W]``."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``[B, D]`` (float32) of normalised images ``[B, 3, H, W]``."""
        pooled = self.pooling(self.backbone(images))
        vectors = F.normalize(pooled.float(), dim=-1)
        if self.whitening is not None:
            vectors = F.normalize(self.whitening(vectors).float(), dim=-1)
        return vectors

    def train(self, mode: bool = True) -> EmbeddingNetwork:
        """Like ``nn.Module.train``, but BatchNorm layers stay in eval mode (frozen stats)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        return self

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: GeM's ``p`` gets 10x ``lr`` (``gemmp``: 100x) and no
        weight decay.

        Returns:
            A list for ``torch.optim.AdamW(groups)``; each group has a ``name``
            (``network`` or ``gem_p``). Frozen parameters (``requires_grad=False``) are
            left out.
        """
        special = [p for p in self.pooling.parameters() if p.requires_grad] \
            if isinstance(self.pooling, GeM) else []
        special_ids = {id(p) for p in special}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in special_ids]
        groups: list[dict[str, Any]] = [
            {"name": "network", "params": rest, "lr": lr, "weight_decay": weight_decay}]
        if special:
            groups.append({"name": "gem_p", "params": special,
                           "lr": lr * GEM_LR_MULTIPLIER[self.config.pooling],
                           "weight_decay": 0.0})
        return groups

    @property
    def gem_p(self) -> float | None:
        """The current GeM exponent (``gemmp``: the mean over channels; ``None`` for
        MAC, SPoC and R-MAC)."""
        return float(self.pooling.p.mean().item()) if isinstance(self.pooling, GeM) else None


def build_network(
    config: NetworkConfig,
    init: str | os.PathLike = "none",
    reporter: Any | None = None,
) -> EmbeddingNetwork:
    """Build an :class:`EmbeddingNetwork` from ``config`` and initial weights.

    Args:
        config: the architecture; a copy with ``mean``/``std`` resolved is stored on the
            network.
        init: ``"none"`` (random weights), ``"pretrained"`` (ImageNet weights through
            timm or torchvision: needs the hub or a local cache), or a path to a local
            safetensors / PyTorch state dict matched by name (see
            :mod:`raml_cli.model.weights`; the report is kept as ``network.init_report``).
        reporter: a :class:`~raml_cli.progress.Reporter` that shows the weights report.

    Raises:
        InputError: unknown architecture or pooling, or a weights file that does not fit.
        DownloadError: pretrained weights unavailable (offline and not cached).
        FormatError: an unreadable weights file.
    """
    init_path: Path | None = None
    if isinstance(init, os.PathLike) or (isinstance(init, str) and init not in
                                          ("none", "pretrained")):
        init_path = Path(init)
    backbone = create_backbone(config.architecture, pretrained=(init == "pretrained"))
    resolved = NetworkConfig(
        architecture=config.architecture, pooling=config.pooling, whitening=config.whitening,
        gem_p=config.gem_p, mean=config.mean or backbone.mean, std=config.std or backbone.std)
    network = EmbeddingNetwork(resolved, backbone.module, backbone.num_features)
    network.init_report = None
    if init_path is not None:
        from raml_cli.model.weights import load_init_weights

        network.init_report = load_init_weights(network, init_path)
        if reporter is not None:
            reporter.log(network.init_report.summary())
            if network.init_report.missing:
                reporter.warn(f"{len(network.init_report.missing)} backbone tensors were not "
                              f"in {init_path} and keep their random initialisation.")
    return network.eval()
