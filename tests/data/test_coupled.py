"""Coupled augmentations: one draw, the same content at two resolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raml_cli.data.coupled import CoupledAugmentation, CoupledViewsDataset, mix_batch
from raml_cli.data.dataset import Sample
from raml_cli.errors import InputError
from raml_cli.train.sampler import SeededDataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _picture(width: int = 180, height: int = 140, seed: int = 0) -> Image.Image:
    """A smooth, asymmetric picture (gradients and blobs) where a wrong crop shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        cx, cy, freq = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(3, 6)
        channels.append(0.5 + 0.25 * np.sin(freq * xx + cx) + 0.25 * np.cos(freq * yy * 1.7 + cy)
                        * xx)
    pixels = (np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _write_images(root: Path, count: int) -> list[Sample]:
    samples = []
    for i in range(count):
        path = f"c{i % 2}/img{i}.jpg"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        _picture(seed=i).save(root / path, quality=95)
        samples.append(Sample(path, i % 2))
    return samples


@pytest.mark.parametrize("jitter", [None, (0.4, 0.4, 0.4, 0.1)])
def test_large_view_resized_is_the_small_view(jitter) -> None:
    aug = CoupledAugmentation(32, 96, MEAN, STD, jitter=jitter)
    image = _picture()
    torch.manual_seed(0)
    errors, mismatched = [], []
    for _ in range(20):
        low, high = aug(image)
        shrunk = F.interpolate(high[None], size=(32, 32), mode="bilinear", antialias=True,
                               align_corners=False)[0]
        errors.append((shrunk - low).abs().mean().item())
        # The same view against another draw's small view: what "different content" costs.
        other_low, _ = aug(image)
        mismatched.append((shrunk - other_low).abs().mean().item())
    assert float(np.mean(errors)) < 0.06  # normalised units (std ~0.22): a few grey levels
    assert float(np.mean(errors)) * 5 < float(np.mean(mismatched))


def test_same_seed_same_views_and_views_differ() -> None:
    aug = CoupledAugmentation(16, 32, MEAN, STD)
    image = _picture()
    torch.manual_seed(5)
    a = [aug(image) for _ in range(3)]
    torch.manual_seed(5)
    b = [aug(image) for _ in range(3)]
    for (la, ha), (lb, hb) in zip(a, b, strict=True):
        assert torch.equal(la, lb) and torch.equal(ha, hb)
    assert not torch.equal(a[0][0], a[1][0])


def test_mix_batch_pairs_other_images_with_one_lambda_for_both_resolutions() -> None:
    # Image b holds the value b everywhere, view i adds 10 * i: the mix shows who was used.
    images, views = 3, 2
    low = torch.zeros(images, views, 3, 4, 4)
    high = torch.zeros(images, views, 3, 8, 8)
    for b in range(images):
        for i in range(views):
            low[b, i], high[b, i] = b + 10 * i, b + 10 * i
    plan = torch.zeros(images, views, 3)
    plan[..., 0] = 0.25  # lam
    plan[0, 0, 1:] = torch.tensor([0.0, 0.9])  # image 0 view 0 <- image 1, view 1
    plan[2, 1, 1:] = torch.tensor([0.99, 0.0])  # image 2 view 1 <- image 1, view 0
    mixed_low, mixed_high = mix_batch(low, high, plan)
    assert torch.allclose(mixed_low[0, 0], torch.tensor(0.25 * 0 + 0.75 * 11.0))
    assert torch.allclose(mixed_low[2, 1], torch.tensor(0.25 * 12 + 0.75 * 1.0))
    for b in range(images):
        for i in range(views):
            assert torch.allclose(mixed_low[b, i].mean(), mixed_high[b, i].mean())
            assert mixed_low[b, i, 0, 0, 0] != low[b, i, 0, 0, 0]  # never its own image only
    # lam = 1 everywhere (no mixup) leaves the batch as it is; one image cannot be mixed.
    same = mix_batch(low, high, torch.ones(images, views, 3))
    assert torch.equal(same[0], low) and torch.equal(same[1], high)
    single = mix_batch(low[:1], high[:1], plan[:1])
    assert torch.equal(single[0], low[:1])


def test_dataset_items_are_p_views_seeded_per_item(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 4)
    aug = CoupledAugmentation(16, 32, MEAN, STD)
    data = SeededDataset(CoupledViewsDataset(tmp_path, samples, aug, views=3, mixup_alpha=0.2))
    low, high, plan, index = data[(2, 123)]
    assert low.shape == (3, 3, 16, 16) and high.shape == (3, 3, 32, 32) and index == 2
    assert plan.shape == (3, 3) and ((plan >= 0) & (plan <= 1)).all()
    again = data[(2, 123)]
    assert torch.equal(low, again[0]) and torch.equal(high, again[1])
    assert torch.equal(plan, again[2])
    other = data[(2, 124)]
    assert not torch.equal(low, other[0])
    plain = SeededDataset(CoupledViewsDataset(tmp_path, samples, aug, views=3))
    assert torch.equal(plain[(2, 123)][2], torch.ones(3, 3))  # no mixup: lam = 1


def test_mixed_batch_keeps_the_same_content_at_both_sizes(tmp_path: Path) -> None:
    samples = _write_images(tmp_path, 4)
    aug = CoupledAugmentation(16, 32, MEAN, STD)
    data = SeededDataset(CoupledViewsDataset(tmp_path, samples, aug, views=4, mixup_alpha=1.0))
    items = [data[(i, 40 + i)] for i in range(4)]
    low = torch.stack([it[0] for it in items])
    high = torch.stack([it[1] for it in items])
    plan = torch.stack([it[2] for it in items])
    mixed_low, mixed_high = mix_batch(low, high, plan)
    assert not torch.allclose(low, mixed_low, atol=1e-3)
    # Mixing is linear, so each mixed pair still holds the same content at both sizes.
    shrunk = F.interpolate(mixed_high.flatten(0, 1), size=(16, 16), mode="bilinear",
                           antialias=True)
    assert (shrunk - mixed_low.flatten(0, 1)).abs().mean() < 0.06


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 8"):
        CoupledAugmentation(4, 32, MEAN, STD)
    aug = CoupledAugmentation(16, 32, MEAN, STD)
    with pytest.raises(InputError, match="--augs"):
        CoupledViewsDataset(tmp_path, [], aug, views=0)
    with pytest.raises(InputError, match="--mixup"):
        CoupledViewsDataset(tmp_path, [], aug, mixup_alpha=-1)
