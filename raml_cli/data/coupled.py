"""Coupled augmentations for distillation (METHOD.md, "Distillation").

One random draw of the augmentation, rendered twice: at the query resolution ``r``
for the student and at the database resolution ``R`` for the teacher, so both
networks see the same content at two resolutions. A draw holds:

- a random resized crop box (torchvision's: area 8-100 % of the image, aspect 3/4-4/3),
  cut from the *original* image and resized to ``r`` and to ``R`` (bilinear,
  antialiased): the same relative box at both resolutions;
- a horizontal flip (probability 1/2);
- a colour jitter (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1: factors drawn
  as torchvision's ``ColorJitter`` draws them, applied in its random order) with the
  same factors for both renderings.

Mixup (alpha 0.2 in the reference) mixes each coupled pair with a coupled pair of
another random training image: ``lam * a + (1 - lam) * b`` with one
``lam ~ Beta(alpha, alpha)`` for both resolutions. The partner pair is taken from
another image of the same (randomly drawn) micro-batch (:func:`mix_batch`), which
halves the cost of augmentation compared with rendering a partner per view.

:class:`CoupledViewsDataset` yields, for one training image, ``P`` coupled views
normalised with the network's mean/std, and their mixup plan. All randomness comes
from torch's global RNG, which :class:`~raml_cli.train.sampler.SeededDataset` seeds per
item, so an item is a function of its seed alone (reproducible, resumable).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from raml_cli.data.dataset import Sample
from raml_cli.data.images import load_rgb
from raml_cli.errors import InputError

#: torchvision's ColorJitter factors of the reference: brightness, contrast, saturation, hue.
REFERENCE_JITTER = (0.4, 0.4, 0.4, 0.1)
#: Area fraction and aspect-ratio range of the random resized crop (torchvision defaults).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class CoupledDraw:
    """One random draw of a coupled augmentation, valid for one source image.

    Attributes:
        box: crop ``(top, left, height, width)`` in pixels of the source image; both
            renderings cut it from that same image, so it is the same relative box.
        flip: mirror horizontally.
        jitter_order: the order in which brightness (0), contrast (1), saturation (2)
            and hue (3) are applied.
        brightness, contrast, saturation: multiplicative factors (1 = unchanged).
        hue: hue shift as a fraction of the colour circle, in ``[-0.5, 0.5]``.
    """

    box: tuple[int, int, int, int]
    flip: bool
    jitter_order: tuple[int, ...]
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None


class CoupledAugmentation:
    """Draw a coupled augmentation and render it at the query and database resolution.

    Args:
        query_res: ``r``, the student's resolution (pixels, square views).
        database_res: ``R``, the teacher's resolution.
        mean, std: input normalisation (the network's).
        jitter: ColorJitter strengths ``(brightness, contrast, saturation, hue)``;
            ``None`` for no colour jitter.
        flip: draw horizontal flips.
        scale, ratio: random resized crop ranges (area fraction, aspect ratio).

    >>> aug = CoupledAugmentation(16, 32, (0.5,) * 3, (0.5,) * 3)
    >>> low, high = aug(Image.new("RGB", (60, 40)))
    >>> tuple(low.shape), tuple(high.shape)
    ((3, 16, 16), (3, 32, 32))
    """

    def __init__(self, query_res: int, database_res: int, mean: Sequence[float],
                 std: Sequence[float], jitter: Sequence[float] | None = REFERENCE_JITTER,
                 flip: bool = True, scale: tuple[float, float] = CROP_SCALE,
                 ratio: tuple[float, float] = CROP_RATIO) -> None:
        if int(query_res) < 8 or int(database_res) < 8:
            raise InputError(f"Resolutions must be at least 8 pixels; got query {query_res} "
                             f"and database {database_res}.")
        self.query_res = int(query_res)
        self.database_res = int(database_res)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.flip = bool(flip)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self._jitter = T.ColorJitter(*jitter) if jitter is not None else None

    def draw(self, image: Image.Image) -> CoupledDraw:
        """One random draw for ``image`` (torch's global RNG)."""
        box = tuple(int(v) for v in T.RandomResizedCrop.get_params(image, list(self.scale),
                                                                     list(self.ratio)))
        flip = self.flip and bool(torch.rand(1).item() < 0.5)
        if self._jitter is None:
            return CoupledDraw(box, flip, (), None, None, None, None)
        j = self._jitter
        order, b, c, s, h = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation,
                                                     j.hue)
        return CoupledDraw(box, flip, tuple(int(v) for v in order), b, c, s, h)

    def render(self, image: Image.Image, draw: CoupledDraw, res: int) -> torch.Tensor:
        """The view of ``draw`` at ``res``: normalised float32 ``[3, res, res]``."""
        top, left, height, width = draw.box
        view = TF.resized_crop(image, top, left, height, width, [res, res],
                               interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        if draw.flip:
            view = TF.hflip(view)
        for step in draw.jitter_order:
            if step == 0 and draw.brightness is not None:
                view = TF.adjust_brightness(view, draw.brightness)
            elif step == 1 and draw.contrast is not None:
                view = TF.adjust_contrast(view, draw.contrast)
            elif step == 2 and draw.saturation is not None:
                view = TF.adjust_saturation(view, draw.saturation)
            elif step == 3 and draw.hue is not None:
                view = TF.adjust_hue(view, draw.hue)
        return TF.normalize(TF.to_tensor(view), self.mean, self.std)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """One coupled pair: ``(low [3, r, r], high [3, R, R])`` of one random draw."""
        draw = self.draw(image)
        return (self.render(image, draw, self.query_res),
                self.render(image, draw, self.database_res))


def mix_batch(low: torch.Tensor, high: torch.Tensor,
              plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of coupled pairs within a micro-batch, one ``lam`` per pair for both resolutions.

    Pair ``(b, i)`` (image ``b``, view ``i``) is mixed with pair ``(p, j)`` of another image
    ``p != b`` of the batch: ``lam * x[b, i] + (1 - lam) * x[p, j]`` for both ``low`` and
    ``high``. The images of a micro-batch are a random draw of the training set, so the
    partner is another random training image, and its coupled pair costs nothing extra.

    Args:
        low: ``[B, P, 3, r, r]`` student views.
        high: ``[B, P, 3, R, R]`` teacher views.
        plan: ``[B, P, 3]`` per pair: ``lam``, then two numbers in ``[0, 1)`` that pick the
            partner image (among the ``B - 1`` others) and its view (among ``P``), as drawn
            by :class:`CoupledViewsDataset`.

    Returns:
        The mixed ``(low, high)``; unchanged when ``B < 2`` or every ``lam`` is 1.
    """
    images, views = low.shape[:2]
    if images < 2:
        return low, high
    lam = plan[..., 0].to(low.dtype)
    offset = 1 + (plan[..., 1] * (images - 1)).long().clamp_(max=images - 2)
    partner = (torch.arange(images)[:, None] + offset) % images  # [B, P], never b itself
    partner_view = (plan[..., 2] * views).long().clamp_(max=views - 1)

    def blend(x: torch.Tensor) -> torch.Tensor:
        weight = lam.reshape(images, views, 1, 1, 1)
        return weight * x + (1 - weight) * x[partner, partner_view]

    return blend(low), blend(high)


class CoupledViewsDataset:
    """``P`` coupled views of each training image, and their mixup plan.

    Item ``index`` -> ``(low [P, 3, r, r], high [P, 3, R, R], plan [P, 3], index)``. The
    plan holds, per view, ``lam ~ Beta(alpha, alpha)`` (1 without mixup) and the two
    uniform numbers with which :func:`mix_batch` picks the partner pair in the collated
    micro-batch; drawing them here ties them to the item's seed (reproducible, resumable).

    Args:
        root: the folder that sample paths are relative to.
        samples: the training images (labels are not used: distillation is label-free).
        augmentation: the :class:`CoupledAugmentation`.
        views: ``P``, coupled views per image.
        mixup_alpha: Beta parameter of mixup; 0 disables mixup.
    """

    def __init__(self, root: str | os.PathLike, samples: Sequence[Sample],
                 augmentation: CoupledAugmentation, views: int = 8,
                 mixup_alpha: float = 0.0) -> None:
        if int(views) < 1:
            raise InputError(f"--augs (views per image) must be at least 1, got {views}.")
        if mixup_alpha < 0 or not math.isfinite(mixup_alpha):
            raise InputError(f"--mixup must be a non-negative number, got {mixup_alpha}.")
        self.root = Path(root)
        self.samples = list(samples)
        self.augmentation = augmentation
        self.views = int(views)
        self.mixup_alpha = float(mixup_alpha)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        image = load_rgb(self.root / self.samples[index].path)
        pairs = [self.augmentation(image) for _ in range(self.views)]
        plan = torch.ones(self.views, 3)
        if self.mixup_alpha > 0:
            beta = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha)
            plan[:, 0] = beta.sample((self.views,))
            plan[:, 1:] = torch.rand(self.views, 2)
        low = torch.stack([p[0] for p in pairs])
        high = torch.stack([p[1] for p in pairs])
        return low, high, plan, index
