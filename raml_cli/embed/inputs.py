"""What ``raml embed`` encodes: a dataset split, an image folder, or a list of images.

``--images DIR`` takes every image under ``DIR`` (recursively, sorted by path);
``--images LIST.txt`` takes one path per line (relative to the list's folder or
absolute; blank lines and ``#`` comments are skipped), in the list's order.

Labels come from folder names, so a query folder and a database folder embedded
separately get the same class ids:

- an image directly in ``DIR`` (or a list entry without a folder) gets ``-1`` (unknown);
- otherwise the class is the first folder under ``DIR`` (for a list: the image's parent
  folder). When every class name is an integer or starts with one (``017``,
  ``001.Black_footed_Albatross``), that integer is the class id; otherwise the id is a
  stable 62-bit hash of the folder name (:func:`class_id`), the same in every run.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from raml_cli.data.dataset import Sample
from raml_cli.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".jfif")
_LEADING_INT = re.compile(r"^(\d+)")


def class_id(name: str) -> int:
    """A stable non-negative class id for a folder name (62 bits of its BLAKE2b hash)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def _labels_for(names: list[str | None]) -> list[int]:
    classes = sorted({n for n in names if n is not None})
    numbers = {n: _LEADING_INT.match(n) for n in classes}
    numeric = all(numbers.values()) and \
        len({int(m.group(1)) for m in numbers.values() if m}) == len(classes)
    mapping = {n: (int(numbers[n].group(1)) if numeric else class_id(n)) for n in classes}
    return [-1 if n is None else mapping[n] for n in names]


def images_in_folder(folder: Path) -> list[Sample]:
    """Every image under ``folder`` (recursive, sorted), labelled by its top sub-folder."""
    paths: list[str] = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                paths.append(Path(current, name).relative_to(folder).as_posix())
    paths.sort()
    if not paths:
        raise InputError(f"No images under {folder} (looked for {', '.join(IMAGE_SUFFIXES)}, "
                         "recursively). Point --images at a folder of images or a text file "
                         "listing them.")
    names = [p.split("/")[0] if "/" in p else None for p in paths]
    return [Sample(p, label) for p, label in zip(paths, _labels_for(names), strict=True)]


def images_in_list(list_file: Path) -> list[Sample]:
    """The images named in a text file, one per line, labelled by their parent folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read the image list {list_file}: {err}. It must be a UTF-8 "
                         "text file with one image path per line.") from err
    entries = [line.strip() for line in lines]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise InputError(f"The image list {list_file} names no images (one path per line; "
                         "# starts a comment).")
    names = [Path(e).parent.name or None for e in entries]
    return [Sample(e, label) for e, label in zip(entries, _labels_for(names), strict=True)]


def collect_images(spec: str | os.PathLike) -> tuple[Path, list[Sample]]:
    """Resolve ``--images DIR`` or ``--images LIST.txt`` to ``(root, samples)``.

    Sample paths are relative to ``root`` (the folder, or the list's folder; absolute
    paths in a list stay absolute).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, images_in_folder(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return path.parent, [Sample(path.name, -1)]
        return path.parent, images_in_list(path)
    raise InputError(f"--images {spec}: no such folder or file. Give a folder of images "
                     "(searched recursively) or a text file with one image path per line.")
