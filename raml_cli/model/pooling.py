"""Global pooling of a feature map ``[B, C, h, w]`` into one vector ``[B, C]``.

- ``gem``: generalised mean, ``(mean over h, w of clamp(x, eps)^p)^(1/p)`` with one
  learnable exponent ``p`` (initialised at 3; p = 1 is average, p -> inf is max);
  Radenovic et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018.
- ``gemmp``: GeM with one learnable exponent per channel (``p`` of size ``C``).
- ``mac``: maximum activation of convolutions, the max over h, w.
- ``spoc``: sum-pooled convolutional features, here the mean over h, w (the scale does
  not matter after L2 normalisation).
- ``rmac``: regional MAC (Tolias et al., "Particular object retrieval with integral
  max-pooling of CNN activations", ICLR 2016): the MAC vector of each region of a
  multi-scale grid of square regions (:func:`rmac_regions`) and of the whole map, each
  L2-normalised, summed.

Pooling always runs in float32, also under bf16 autocast: ``x^p`` for p = 3 of bf16
activations loses too much precision.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raml_cli.errors import InputError

POOLING_NAMES = ("gem", "gemmp", "mac", "spoc", "rmac")

#: R-MAC: the number of scales of the region grid and the overlap sought between
#: neighbouring regions on the longer side of the map (Tolias et al.: 3 and 0.4).
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4
#: The extra regions on the longer side are chosen among 1..6.
_RMAC_MAX_EXTRA = 6


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p``.

    Args:
        p: the initial exponent.
        channels: ``1`` (one exponent shared by all channels, ``gem``) or ``C`` (one per
            channel, ``gemmp``).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, channels: int = 1) -> None:
        super().__init__()
        if p <= 0:
            raise InputError(f"The GeM exponent p must be positive, got {p}.")
        self.p = nn.Parameter(torch.full((int(channels),), float(p)))
        self.eps = eps

    @property
    def per_channel(self) -> bool:
        return self.p.numel() > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C]``."""
        p = self.p[:, None, None] if self.per_channel else self.p
        x = x.float().clamp(min=self.eps).pow(p)
        return x.mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        if self.per_channel:
            return f"p=[{self.p.numel()}] (mean {self.p.mean().item():.4f}), eps={self.eps}"
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


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS,
                 overlap: float = RMAC_OVERLAP) -> list[tuple[int, int, int]]:
    """The square regions of R-MAC on a ``height x width`` feature map.

    At level ``l`` (1..``levels``) the regions are squares of side
    ``floor(2 * min(h, w) / (l + 1))``, ``l`` of them along the shorter side and ``l + m``
    along the longer one, evenly spaced from edge to edge (start ``k`` at
    ``floor(k * (side_length - size) / (count - 1))``). ``m`` (0 for a square map, else
    1..6) makes neighbouring level-1 regions on the longer side overlap by about
    ``overlap`` of their size. Levels whose side would be 0 are left out.

    Returns:
        ``(top, left, size)`` of each region, level by level, row-major.

    >>> rmac_regions(2, 3, levels=1)
    [(0, 0, 2), (0, 1, 2)]
    """
    short, long_ = min(height, width), max(height, width)
    extra = 0
    if height != width:
        # Level-1 squares of side `short` spaced by (long - short) / m overlap by 1 - step/short.
        extra = min(range(1, _RMAC_MAX_EXTRA + 1),
                    key=lambda m: abs(1 - (long_ - short) / m / short - overlap))
    regions = []
    for level in range(1, levels + 1):
        size = math.floor(2 * short / (level + 1))
        if size == 0:
            continue
        rows = _starts(height, size, level + (extra if height > width else 0))
        cols = _starts(width, size, level + (extra if width > height else 0))
        regions.extend((top, left, size) for top in rows for left in cols)
    return regions


def _starts(length: int, size: int, count: int) -> list[int]:
    if count == 1:
        return [0]
    step = (length - size) / (count - 1)
    return [math.floor(k * step) for k in range(count)]


class RMAC(nn.Module):
    """Regional MAC: the sum of the L2-normalised MAC vectors of the whole map and of
    each region of :func:`rmac_regions` (``x / (|x| + eps)``)."""

    def __init__(self, levels: int = RMAC_LEVELS, eps: float = 1e-6) -> None:
        super().__init__()
        self.levels = levels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C]``."""
        x = x.float()
        height, width = x.shape[-2:]
        total = self._unit(x.amax(dim=(-2, -1)))
        for top, left, size in rmac_regions(height, width, self.levels):
            region = x[..., top:top + size, left:left + size]
            total = total + self._unit(region.amax(dim=(-2, -1)))
        return total

    def _unit(self, v: torch.Tensor) -> torch.Tensor:
        return v / (v.norm(dim=-1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def create_pooling(name: str, gem_p: float = 3.0, channels: int = 1) -> nn.Module:
    """The pooling layer ``name`` (one of :data:`POOLING_NAMES`).

    Args:
        channels: the feature map's channel count ``C`` (the size of ``gemmp``'s ``p``).
    """
    key = name.strip().lower()
    if key == "gem":
        return GeM(p=gem_p)
    if key == "gemmp":
        return GeM(p=gem_p, channels=channels)
    if key == "mac":
        return MAC()
    if key == "spoc":
        return SPoC()
    if key == "rmac":
        return RMAC()
    raise InputError(f"Unknown pooling {name!r}. Choose one of: {', '.join(POOLING_NAMES)}.")
