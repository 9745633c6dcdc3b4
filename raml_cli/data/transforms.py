"""Image transforms: PIL RGB image -> normalised float tensor ``[3, res, res]``.

- :func:`eval_transform` (METHOD.md, "Evaluation transform"): resize so the SHORTER side
  is ``round(res * 8 / 7)`` (bilinear, antialiased), centre-crop ``res x res``, to a
  tensor in [0, 1], normalise with ``mean``/``std``. Used by ``raml embed`` and by every
  validation.
- :func:`train_transform`: random resized crop to ``res`` (scale 0.08-1, aspect 3/4-4/3,
  torchvision's defaults) and a horizontal flip with probability 1/2, then normalise.

The last step (to tensor, normalise) runs in NumPy, not in torch: torch parallelises
element-wise work on tensors above ~32k elements over its intra-op threads, and with the
cores busy running the network (decoding in the main process, ``--workers 0``) that
turned a 0.3 ms step into 80 ms.

>>> from PIL import Image
>>> eval_transform(64, (0.5,) * 3, (0.5,) * 3)(Image.new("RGB", (100, 80))).shape
torch.Size([3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from raml_cli.errors import InputError

RESIZE_RATIO = 8 / 7


def eval_resize_size(res: int) -> int:
    """The shorter side an image is resized to before the centre crop: ``round(res*8/7)``."""
    return int(round(res * RESIZE_RATIO))


def _check(res: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if int(res) < 8:
        raise InputError(f"The resolution must be at least 8 pixels, got {res}.")
    if len(mean) != 3 or len(std) != 3:
        raise InputError("mean and std must each hold 3 numbers (R, G, B).")


class ToNormalizedTensor:
    """RGB PIL image -> float32 tensor ``[3, H, W]`` of ``(pixel / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
        self.offset = (np.asarray(mean, dtype=np.float64) /
                       np.asarray(std, dtype=np.float64)).astype(np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image,
                           dtype=np.float32)
        array = array * self.scale - self.offset  # [H, W, 3]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class EvalTransform:
    """The evaluation transform; ``min_size`` tells the decoder how small it may decode."""

    def __init__(self, res: int, mean: Sequence[float], std: Sequence[float]) -> None:
        _check(res, mean, std)
        self.res = int(res)
        self.min_size = eval_resize_size(self.res)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._steps = T.Compose([
            T.Resize(self.min_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(self.res),
            ToNormalizedTensor(self.mean, self.std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float32 ``[3, res, res]``."""
        return self._steps(image)

    def __repr__(self) -> str:
        return f"EvalTransform(res={self.res}, resize={self.min_size})"


class TrainTransform:
    """Random resized crop to ``res`` + horizontal flip + normalise (teacher training)."""

    min_size = None  # a random crop may zoom into a small region: decode at full size

    def __init__(self, res: int, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.08, 1.0)) -> None:
        _check(res, mean, std)
        self.res = int(res)
        self._steps = T.Compose([
            T.RandomResizedCrop(self.res, scale=scale,
                                interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.RandomHorizontalFlip(),
            ToNormalizedTensor(mean, std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float32 ``[3, res, res]`` (random; seeded by torch's RNG)."""
        return self._steps(image)

    def __repr__(self) -> str:
        return f"TrainTransform(res={self.res})"


def eval_transform(res: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    """Shorter side to ``round(res*8/7)``, centre crop ``res``, tensor, normalise."""
    return EvalTransform(res, mean, std)


def train_transform(res: int, mean: Sequence[float], std: Sequence[float]) -> TrainTransform:
    """Random resized crop to ``res``, horizontal flip, tensor, normalise."""
    return TrainTransform(res, mean, std)
