"""What every dataset parser returns, and the checks shared by all of them.

A parser reads a dataset's annotation files (never its pixels) and returns a
:class:`ParsedDataset`: the image root and the zero-shot ``train`` / ``test``
samples. Whether the listed images exist on disk is a separate, cheaper-to-skip
step (:func:`missing_images`), so parsers can be tested on the real annotation
files alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raml_cli.data.dataset import Sample
from raml_cli.errors import DataError

#: File name suffixes counted as images when a folder is scanned (compared lower-case).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass
class ParsedDataset:
    """A dataset's annotations resolved to samples.

    Attributes:
        image_root: the folder that every ``Sample.path`` is relative to.
        train: every image of the training classes.
        test: every image of the (unseen) test classes.
        layout: which on-disk layout was found (e.g. ``"devkit"`` for Cars).
        class_names: class id -> human-readable name, where the dataset has names.
    """

    image_root: Path
    train: list[Sample]
    test: list[Sample]
    layout: str
    class_names: dict[int, str] = field(default_factory=dict)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{"train": (classes, images), "test": (classes, images)}``."""
        return {name: (len({s.label for s in samples}), len(samples))
                for name, samples in (("train", self.train), ("test", self.test))}


def find_folder_with(folder: Path, names: Sequence[str], depth: int = 2) -> Path | None:
    """The first folder at or below ``folder`` (breadth first, ``depth`` levels) holding all
    of ``names``; ``None`` if there is none.

    Archives unpack into a top folder (``CUB_200_2011/``), and users point at either the
    folder or its parent; this finds the annotation files in both cases.
    """
    level = [folder]
    for _ in range(depth + 1):
        for candidate in level:
            if all((candidate / name).exists() for name in names):
                return candidate
        level = sorted(child for parent in level for child in _subfolders(parent))
    return None


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a text annotation file (any line ending, UTF-8 with BOM or not)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise DataError(f"The annotation file {path} is missing. The dataset folder is "
                        "incomplete: run `raml download` for it again.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read the annotation file {path} ({err}). Replace it with the "
                        "file from the official archive.") from err
    return [line for line in text.splitlines() if line.strip()]


def format_error(path: Path, line_number: int, problem: str, expected: str) -> DataError:
    """A :class:`DataError` for a malformed line of an annotation file."""
    return DataError(f"{path}, line {line_number}: {problem}. Each line should read "
                     f"{expected}. The file is damaged or from another dataset: replace it with "
                     "the one from the official archive.")


def missing_images(root: Path, paths: Iterable[str]) -> list[str]:
    """The paths (relative to ``root``) that are not readable regular files.

    Checks existence, file type and read permission with one ``stat``-like call per
    image; it does not decode images (a corrupt JPEG is reported by path when it is
    loaded, see ``raml_cli.data.images``).
    """
    missing = []
    for relative in paths:
        full = os.path.join(root, relative)
        if not (os.path.isfile(full) and os.access(full, os.R_OK)):
            missing.append(relative)
    return missing


def check_images_exist(root: Path, samples: Sequence[Sample], what: str, hint: str) -> None:
    """Raise :class:`DataError` naming the missing or unreadable images of ``samples``.

    Args:
        root: the image root the sample paths are relative to.
        samples: the samples to check.
        what: the dataset, for the message (``"cub200"``, ``"the CSV data.csv"``).
        hint: what the user should do, appended to the message.
    """
    missing = missing_images(root, (s.path for s in samples))
    if missing:
        shown = ", ".join(str(root / p) for p in missing[:5])
        more = f" and {len(missing) - 5:,} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing):,} of the {len(samples):,} images of {what} are missing "
                        f"or unreadable: {shown}{more}. {hint}")
