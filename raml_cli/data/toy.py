"""The built-in ``toy`` dataset: a small fine-grained retrieval set generated locally.

It exists so that every code path (download, parsing, training, distillation,
embedding, evaluation, the demo) runs with no network, in minutes on a CPU. It is
written in the CUB-200-2011 on-disk layout, so it is read by the real CUB parser::

    DEST/images/<NNN.class_name>/<class_name>_<NNNN>.jpg
    DEST/images.txt               <image_id> <path relative to DEST/images>
    DEST/image_class_labels.txt   <image_id> <class_id>
    DEST/classes.txt              <class_id> <NNN.class_name>
    DEST/train_test_split.txt     <image_id> <1 = training class, 0 = test class>

Class ids run 1..C; the first half are the training classes, the second half the
(unseen) test classes, as in the zero-shot protocol of CUB.

How it is hard in the way CUB is (docs/toy.md has the full story): every image shows
the same coarse "bird" (an elliptic body, a round head, a tail) on a cluttered
background. Classes share that shape and one of three body colours; they differ
only in *fine detail*: the spacing and the orientation of the stripes on the body
and a tiny mark on the head. At the database resolution (128 px) all of it is
visible; at half of that (64 px) the densest stripes fall near the sampling limit
and the head mark shrinks to two or three pixels, so the detail is degraded but not
destroyed; at 48 px more of it is gone. Nuisances (position, size, facing
direction, tilt, background, clutter, lighting, sensor noise, JPEG quality) force a
network to learn invariances rather than pixel templates.

>>> import tempfile, pathlib
>>> dest = pathlib.Path(tempfile.mkdtemp()) / "toy"
>>> generate_toy(dest, seed=0, num_classes=4, images_per_class=2)
>>> (dest / "classes.txt").read_text().splitlines()[0]
'1 001.slate_n15_o30_ring'
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from raml_cli.atomic import ensure_writable_parent, temporary_sibling
from raml_cli.errors import InputError
from raml_cli.progress import NULL_REPORTER, Reporter

#: Body colour families (RGB in [0, 1]): the coarse cue shared by many classes.
COLOUR_FAMILIES: dict[str, tuple[float, float, float]] = {
    "ochre": (0.78, 0.58, 0.30),
    "slate": (0.42, 0.52, 0.66),
    "olive": (0.52, 0.60, 0.34),
}
#: Stripes across the body length (more stripes = finer detail), the main fine cue.
STRIPE_COUNTS: tuple[int, ...] = (6, 8, 11, 15, 20)
#: Stripe orientation in degrees relative to the body axis; mirror-symmetric classes
#: (a flipped bird with orientation t shows 180 - t), so horizontal flips keep the class.
STRIPE_ORIENTATIONS: tuple[int, ...] = (0, 30, 60, 90)
#: The tiny mark on the head (a few pixels at the database resolution).
HEAD_MARKS: tuple[str, ...] = ("dot", "ring", "bar", "cross")


@dataclass(frozen=True)
class ToyClass:
    """The attributes that define one toy class.

    Attributes:
        class_id: 1..C.
        colour: key of :data:`COLOUR_FAMILIES` (coarse, shared by about a third of classes).
        stripes: stripes across the body length (fine detail).
        orientation: stripe angle to the body axis in degrees (fine detail).
        mark: the head mark, one of :data:`HEAD_MARKS` (fine detail).
    """

    class_id: int
    colour: str
    stripes: int
    orientation: int
    mark: str

    @property
    def folder(self) -> str:
        """``NNN.name`` as in CUB's ``classes.txt``."""
        return f"{self.class_id:03d}.{self.name}"

    @property
    def name(self) -> str:
        return f"{self.colour}_n{self.stripes:02d}_o{self.orientation:02d}_{self.mark}"


def toy_classes(num_classes: int, seed: int) -> list[ToyClass]:
    """Draw ``num_classes`` distinct attribute combinations, deterministically from ``seed``.

    The combinations are sampled without replacement from the full grid (colours x
    stripe counts x orientations x marks = 240), so every class differs from every
    other in at least one attribute, and train and test classes share attribute
    values but never a combination (zero-shot).
    """
    grid = [
        (colour, stripes, orientation, mark)
        for colour in COLOUR_FAMILIES
        for stripes in STRIPE_COUNTS
        for orientation in STRIPE_ORIENTATIONS
        for mark in HEAD_MARKS
    ]
    if not 2 <= num_classes <= len(grid):
        raise InputError(f"The toy dataset holds between 2 and {len(grid)} classes "
                         f"(distinct attribute combinations); {num_classes} was asked for.")
    rng = np.random.default_rng([seed, 1])
    chosen = rng.choice(len(grid), size=num_classes, replace=False)
    return [ToyClass(i + 1, *grid[k]) for i, k in enumerate(chosen)]


def generate_toy(
    dest: Path,
    seed: int = 0,
    reporter: Reporter | None = None,
    *,
    num_classes: int = 48,
    images_per_class: int = 24,
    min_side: int = 150,
    max_side: int = 240,
) -> None:
    """Write the toy dataset to ``dest`` in the CUB-200-2011 layout.

    The result is a function of the arguments only (same seed, same bytes). The
    folder appears complete or not at all: everything is written to a temporary
    sibling folder that is renamed onto ``dest`` at the end.

    Args:
        dest: the dataset folder to create; must not exist yet (or be empty).
        seed: the random seed (class attributes and every image).
        reporter: progress reporting (a bar over the images).
        num_classes: C, the number of classes (first half train, second half test).
        images_per_class: images per class.
        min_side, max_side: range of the image width and height in pixels (drawn
            independently, so aspect ratios vary between about 0.6 and 1.6).

    Raises:
        InputError: a bad size option, or ``dest`` exists and is not empty.
    """
    reporter = reporter or NULL_REPORTER
    dest = Path(dest)
    if images_per_class < 2:
        raise InputError("The toy dataset needs at least 2 images per class (retrieval needs a "
                         f"second image of the query's class); {images_per_class} was asked for.")
    if not 32 <= min_side <= max_side:
        raise InputError(f"Toy image sides must satisfy 32 <= min_side <= max_side; got "
                         f"min_side={min_side}, max_side={max_side}.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest} already exists and is not empty. Remove it, or choose "
                         "another destination for the toy dataset.")
    ensure_writable_parent(dest)
    classes = toy_classes(num_classes, seed)
    work = temporary_sibling(dest, "generating")
    try:
        _write_dataset(work, classes, seed, images_per_class, min_side, max_side, reporter)
        if dest.exists():
            dest.rmdir()
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_dataset(work: Path, classes: list[ToyClass], seed: int, images_per_class: int,
                   min_side: int, max_side: int, reporter: Reporter) -> None:
    images_lines, label_lines, split_lines = [], [], []
    num_train = (len(classes) + 1) // 2
    image_id = 0
    with reporter.track("generating toy", total=len(classes) * images_per_class,
                        unit="img") as bar:
        for toy_class in classes:
            folder = work / "images" / toy_class.folder
            folder.mkdir(parents=True)
            is_train = int(toy_class.class_id <= num_train)
            for k in range(images_per_class):
                image_id += 1
                # One generator per image: any image can be re-rendered on its own.
                rng = np.random.default_rng([seed, 2, toy_class.class_id, k])
                width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
                pixels = render_toy_image(toy_class, width, height, rng)
                relative = f"{toy_class.folder}/{toy_class.name}_{k + 1:04d}.jpg"
                Image.fromarray(pixels).save(folder / Path(relative).name, format="JPEG",
                                             quality=int(rng.integers(85, 96)))
                images_lines.append(f"{image_id} {relative}")
                label_lines.append(f"{image_id} {toy_class.class_id}")
                split_lines.append(f"{image_id} {is_train}")
                bar.advance()
    (work / "images.txt").write_text("\n".join(images_lines) + "\n", encoding="utf-8")
    (work / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n", encoding="utf-8")
    (work / "train_test_split.txt").write_text("\n".join(split_lines) + "\n", encoding="utf-8")
    (work / "classes.txt").write_text(
        "".join(f"{c.class_id} {c.folder}\n" for c in classes), encoding="utf-8")


def render_toy_image(toy_class: ToyClass, width: int, height: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Draw one image of ``toy_class``: ``uint8 [height, width, 3]``.

    Layers, back to front: a two-colour gradient with soft blobs (background), a
    branch, the bird (tail, striped body, head with its mark, eye), then global
    brightness/contrast jitter and sensor noise. Edges are anti-aliased with a
    one-pixel soft mask so that fine detail is limited by the stripes themselves,
    not by jagged edges.
    """
    image = _background(width, height, rng)
    short = min(width, height)

    # Pose: size, position, tilt, facing direction (nuisances). The bird stays inside
    # the central square, so the evaluation centre crop never cuts it.
    half_length = 0.5 * short * rng.uniform(0.42, 0.58)
    half_height = half_length * rng.uniform(0.50, 0.60)
    cx = 0.5 * width + rng.uniform(-0.06, 0.06) * short
    cy = 0.5 * height + rng.uniform(-0.06, 0.06) * short
    tilt = math.radians(rng.uniform(-15.0, 15.0))
    facing = 1.0 if rng.random() < 0.5 else -1.0

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    _branch(image, xx, yy, cx, cy + 0.9 * half_height, short, rng)

    # Everything else is drawn in a window around the bird (speed).
    reach_x, reach_y = 1.5 * half_length, 1.0 * half_length
    x0, x1 = max(int(cx - reach_x), 0), min(int(cx + reach_x) + 1, width)
    y0, y1 = max(int(cy - reach_y), 0), min(int(cy + reach_y) + 1, height)
    window = image[y0:y1, x0:x1]
    # Body frame: u along the body axis (towards the head), v across it.
    cos_t, sin_t = math.cos(tilt), math.sin(tilt)
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    u = facing * (cos_t * dx + sin_t * dy)
    v = -sin_t * dx + cos_t * dy

    base = np.clip(np.array(COLOUR_FAMILIES[toy_class.colour]) + rng.normal(0, 0.04, 3), 0, 1)
    base = base.astype(np.float32)
    dark = base * np.float32(rng.uniform(0.30, 0.42))

    # Tail: a wedge behind the body.
    tail_u = u + 0.85 * half_length
    tail = _soft(half_height * 0.45 * (1 + tail_u / (0.5 * half_length)) - np.abs(v))
    tail *= _soft(tail_u + 0.55 * half_length) * _soft(-tail_u + 0.1 * half_length)
    _paint(window, tail, dark * 1.2)

    # Body: an ellipse filled with stripes at the class's spacing and orientation.
    radius = np.sqrt((u / half_length) ** 2 + (v / half_height) ** 2)
    body = _soft((1.0 - radius) * half_height)
    period = 2.0 * half_length / toy_class.stripes
    angle = math.radians(toy_class.orientation)
    phase = rng.uniform(0, 2 * math.pi)
    along = math.cos(angle) * u + math.sin(angle) * v
    stripes = 0.5 + 0.5 * np.tanh(2.5 * np.sin(2 * math.pi * along / period + phase))
    body_colour = base + (dark - base) * stripes[..., None]
    _paint(window, body, body_colour)

    # Head: a plain disc at the front, with the class's mark and an eye.
    head_r = half_height * rng.uniform(0.50, 0.56)
    hu, hv = u - (half_length + 0.45 * head_r), v + 0.35 * half_height
    _paint(window, _soft(head_r - np.sqrt(hu**2 + hv**2)), base * 1.08)
    _paint(window, _head_mark(toy_class.mark, hu, hv, head_r), dark * 0.8)
    eu, ev = hu - 0.5 * head_r, hv + 0.05 * head_r
    _paint(window, _soft(0.14 * head_r - np.sqrt(eu**2 + ev**2)),
           np.array([0.05, 0.05, 0.05], dtype=np.float32))

    # Lighting and sensor: global contrast/brightness, colour cast, noise.
    mean = image.mean(axis=(0, 1), keepdims=True)
    gain = np.float32(rng.uniform(0.8, 1.2))
    image = (image - mean) * gain + mean * np.float32(rng.uniform(0.85, 1.15))
    image *= (1 + rng.normal(0, 0.03, 3)).astype(np.float32)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.015)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _soft(signed_distance: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance in pixels (positive inside)."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0).astype(np.float32)


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` (``[3]`` or ``[H, W, 3]``) into ``image`` where ``mask`` > 0."""
    alpha = mask[..., None]
    image += alpha * (colour - image)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient with soft blobs (foliage, sky, out-of-focus clutter): ``[H, W, 3]``.

    Drawn at 1/8 of the size and enlarged, since it holds no fine detail.
    """
    small_w, small_h = max(width // 8, 2), max(height // 8, 2)
    yy, xx = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    c0, c1 = rng.uniform(0.25, 0.9, 3), rng.uniform(0.25, 0.9, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = math.cos(angle) * xx / small_w + math.sin(angle) * yy / small_h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    for _ in range(int(rng.integers(3, 7))):
        bx, by = rng.uniform(0, small_w), rng.uniform(0, small_h)
        br = rng.uniform(0.1, 0.35) * min(small_w, small_h)
        weight = 0.6 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))
        image = image * (1 - weight[..., None]) + rng.uniform(0.15, 0.95, 3) * weight[..., None]
    small = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    large = small.resize((width, height), Image.BILINEAR)
    return np.asarray(large, dtype=np.float32) / np.float32(255)


def _branch(image: np.ndarray, xx: np.ndarray, yy: np.ndarray, x0: float, y0: float,
            short: int, rng: np.random.Generator) -> None:
    """A thick brown line under the bird (a perch), at a random slant."""
    angle = rng.uniform(-0.3, 0.3)
    distance = np.abs(-math.sin(angle) * (xx - x0) + math.cos(angle) * (yy - y0))
    thickness = short * rng.uniform(0.025, 0.05)
    colour = (np.array([0.35, 0.24, 0.14]) * rng.uniform(0.7, 1.2)).astype(np.float32)
    _paint(image, _soft(thickness - distance), colour)


def _head_mark(mark: str, hu: np.ndarray, hv: np.ndarray, head_r: float) -> np.ndarray:
    """Coverage of the head mark, centred on the head, about half the head's radius wide."""
    size = 0.5 * head_r
    width = max(0.16 * head_r, 0.8)
    mu, mv = hu + 0.15 * head_r, hv
    dist = np.sqrt(mu**2 + mv**2)
    if mark == "dot":
        return _soft(size - dist)
    if mark == "ring":
        return _soft(width - np.abs(dist - 0.8 * size))
    if mark == "bar":
        return _soft(width - np.abs(mv)) * _soft(size - np.abs(mu))
    if mark == "cross":
        inside = _soft(size - np.maximum(np.abs(mu), np.abs(mv)))
        return np.maximum(_soft(width - np.abs(mu - mv) / math.sqrt(2)),
                          _soft(width - np.abs(mu + mv) / math.sqrt(2))) * inside
    raise ValueError(f"unknown head mark {mark!r}")
