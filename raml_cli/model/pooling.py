"""Global pooling of a feature map ``[B, C, h, w]`` into one vector ``[B, C]``.

- ``gem``: generalised mean, ``(mean over h, w of clamp(x, eps)^p)^(1/p)`` with a
  learnable exponent ``p`` (initialised at 3; p = 1 is average, p -> inf is max);
  Radenovic et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018.
- ``mac``: maximum activation of convolutions, the max over h, w.
- ``spoc``: sum-pooled convolutional features, here the mean over h, w (the scale does
  not matter after L2 normalisation).

Pooling always runs in float32, also under bf16 autocast: ``x^p`` for p = 3 of bf16
activations loses too much precision.
"""

from __future__ import annotations

import torch
from torch import nn

from raml_cli.errors import InputError

POOLING_NAMES = ("gem", "mac", "spoc")


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p`` (a 1-element parameter)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise InputError(f"The GeM exponent p must be positive, got {p}.")
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C]``."""
        x = x.float().clamp(min=self.eps).pow(self.p)
        return x.mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class MAC(nn.Module):
    """Max pooling over the spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C]``."""
        return x.float().amax(dim=(-2, -1))


class SPoC(nn.Module):
    """Average pooling over the spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C]``."""
        return x.float().mean(dim=(-2, -1))


def create_pooling(name: str, gem_p: float = 3.0) -> nn.Module:
    """The pooling layer ``name`` (``gem``, ``mac`` or ``spoc``)."""
    key = name.strip().lower()
    if key == "gem":
        return GeM(p=gem_p)
    if key == "mac":
        return MAC()
    if key == "spoc":
        return SPoC()
    raise InputError(f"Unknown pooling {name!r}. Choose one of: {', '.join(POOLING_NAMES)}.")
