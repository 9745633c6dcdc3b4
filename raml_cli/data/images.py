"""Image decoding to RGB, and a dataset of images for PyTorch's DataLoader.

:func:`load_rgb` turns any image PIL can read into an 8-bit RGB image:

- grayscale (``L``, ``1``), CMYK, YCbCr, palette (``P``) -> RGB;
- alpha (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is composited on a
  **white** background (transparent regions of product photos are background, and white
  is what a viewer shows), not dropped;
- 16-bit grayscale PNGs (``I;16*``, ``I``) are scaled to 8 bits (``value / 257``) rather
  than clipped; float images (``F``) are clipped to 0..255;
- the EXIF orientation tag is applied (phone photos appear upright).

JPEGs much larger than needed are decoded at reduced size with PIL's draft mode (the
JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT domain) as long as the shorter side
stays >= ``min_size``: at 112 px queries this makes decoding several times cheaper.

Only regular files are opened (after following links): a FIFO named ``x.jpg`` would
block the reader forever. A missing, empty, truncated, non-regular or non-image file
raises :class:`~raml_cli.errors.DataError`
naming the path. :class:`ImageDataset` can instead mark such a sample as a
:class:`BadImage` (``skip_bad=True``) so that ``raml embed --skip-bad`` leaves it out;
:func:`collate_skipping` separates the good images from the bad ones in a batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raml_cli.data.dataset import Sample
from raml_cli.errors import DataError

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_rgb(path: str | os.PathLike, min_size: int | None = None) -> Image.Image:
    """Open ``path`` and return a fully decoded 8-bit RGB image.

    Args:
        path: the image file.
        min_size: the smallest shorter side (pixels) the caller needs; JPEGs at least
            twice as large are decoded at reduced size (draft mode). ``None``: full size.

    Raises:
        DataError: the file is missing, empty, truncated, not an image, or undecodable.
    """
    file = Path(path)
    if file.exists() and not file.is_file():  # a FIFO would block open() forever
        raise DataError(f"Image {file} is not a regular file (a folder, FIFO, socket or "
                        "device). Remove it from the image list, or run with --skip-bad.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                if min_size and image.format == "JPEG":
                    _draft(image, int(min_size))
                image.load()
                image = ImageOps.exif_transpose(image) or image
                return to_rgb(image)
    except FileNotFoundError as err:
        raise DataError(f"Image {file} does not exist. Check the dataset root (--root) and "
                        "the image list.") from err
    except UnidentifiedImageError as err:
        what = "is empty (0 bytes)" if _size(file) == 0 else "is not an image PIL can read"
        raise DataError(f"Image {file} {what}. Remove or replace it, or run with --skip-bad "
                        "to leave bad images out.") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"Image {file} is too large to decode safely ({err}). Resize it, or "
                        "run with --skip-bad.") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Image {file} cannot be decoded ({err}); it is probably truncated or "
                        "corrupt. Re-download it, or run with --skip-bad.") from err


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return -1


def _draft(image: Image.Image, min_size: int) -> None:
    width, height = image.size
    shorter = min(width, height)
    if shorter < 2 * min_size:
        return
    scale = min_size / shorter
    # draft() picks the largest 1/2^k reduction that keeps both sides >= the request.
    image.draft("RGB", (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB (alpha composited on white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        gray = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


class BadImage(NamedTuple):
    """Stands in for an image that could not be decoded (``ImageDataset(skip_bad=True)``)."""

    path: str
    reason: str


class ImageDataset:
    """Images of a list of samples, transformed; items are ``(image, label, index)``.

    Args:
        root: the folder that ``Sample.path`` is relative to.
        samples: the images and their class ids.
        transform: PIL image -> tensor ``[3, H, W]`` (e.g. ``eval_transform``). Its
            ``min_size`` attribute, when present, enables reduced-size JPEG decoding.
        skip_bad: return a :class:`BadImage` instead of raising :class:`DataError`.
        min_size: overrides ``transform.min_size``.

    ``index`` is the position in ``samples``, so batches can be put back in order.
    """

    def __init__(self, root: str | os.PathLike, samples: Sequence[Sample],
                 transform: Callable[[Image.Image], Any], skip_bad: bool = False,
                 min_size: int | None = None) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        self.skip_bad = skip_bad
        self.min_size = min_size if min_size is not None else getattr(transform, "min_size",
                                                                      None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample = self.samples[index]
        try:
            image = load_rgb(self.root / sample.path, self.min_size)
        except DataError as err:
            if not self.skip_bad:
                raise
            return BadImage(sample.path, str(err)), sample.label, index
        return self.transform(image), sample.label, index


class Batch(NamedTuple):
    """A collated batch: good images stacked, bad ones listed apart."""

    images: Any  # torch.Tensor [B, 3, H, W] or None when every item was bad
    labels: Any  # torch.Tensor int64 [B]
    indices: Any  # torch.Tensor int64 [B], positions in the sample list
    bad: list[tuple[int, BadImage]]


def collate_skipping(items: Sequence[tuple[Any, int, int]]) -> Batch:
    """Collate ``(image, label, index)`` items, setting :class:`BadImage` ones aside."""
    import torch

    good = [it for it in items if not isinstance(it[0], BadImage)]
    bad = [(int(it[2]), it[0]) for it in items if isinstance(it[0], BadImage)]
    images = torch.stack([it[0] for it in good]) if good else None
    labels = torch.tensor([int(it[1]) for it in good], dtype=torch.int64)
    indices = torch.tensor([int(it[2]) for it in good], dtype=torch.int64)
    return Batch(images, labels, indices, bad)
