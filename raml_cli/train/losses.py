"""Losses for label-supervised training, in a registry (``build_loss("triplet", margin=.7)``).

A loss is an ``nn.Module`` registered under a name with :func:`register_loss`;
:func:`build_loss` creates one by name and says which names exist when the name is
unknown. Distillation losses live in :mod:`raml_cli.train.distill_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raml_cli.errors import InputError

_LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the loss available as ``build_loss(name, ...)``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = cls
        return cls

    return add


def loss_names() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def build_loss(name: str, **options: Any) -> nn.Module:
    """Create the loss registered as ``name`` with ``options``.

    >>> build_loss("triplet", margin=0.5)
    TripletLoss(margin=0.5)
    """
    if name not in _LOSSES:
        raise InputError(f"Unknown loss {name!r}. Choose one of: {', '.join(loss_names())}.")
    return _LOSSES[name](**options)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b|^2`` along the last dimension, broadcasting (``[..., D] -> [...]``)."""
    return (a - b).pow(2).sum(dim=-1)


@register_loss("triplet")
class TripletLoss(nn.Module):
    """Triplet margin loss on squared Euclidean distances of unit vectors.

    ``L = mean over (a, p, n) of max(0, |a - p|^2 - |a - n|^2 + margin)``: every anchor
    has one positive and ``N`` negatives, giving ``N`` triplets per anchor; the mean runs
    over all ``B * N`` triplets. For unit vectors ``|a - b|^2 = 2 - 2 a.b`` lies in
    ``[0, 4]``.

    Args:
        margin: the margin ``m`` (reference: 0.7).
    """

    def __init__(self, margin: float = 0.7) -> None:
        super().__init__()
        if margin < 0:
            raise InputError(f"--margin must be >= 0, got {margin}.")
        self.margin = float(margin)

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor) -> torch.Tensor:
        """The loss of ``anchors [B, D]``, ``positives [B, D]``, ``negatives [B, N, D]``.

        Returns a scalar (0 with gradient for an empty batch).
        """
        if anchors.shape[0] == 0:
            return anchors.sum() * 0.0
        positive = squared_distances(anchors, positives)[:, None]  # [B, 1]
        negative = squared_distances(anchors[:, None, :], negatives)  # [B, N]
        return torch.clamp(positive - negative + self.margin, min=0.0).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}"
