"""The CUB-200-2011 layout (also the layout of the built-in ``toy`` dataset).

::

    CUB_200_2011/images/<NNN.class_name>/<file>.jpg
    CUB_200_2011/images.txt              <image_id> <path relative to images/>
    CUB_200_2011/image_class_labels.txt  <image_id> <class_id>
    CUB_200_2011/classes.txt             <class_id> <NNN.class_name>

Zero-shot split (METHOD.md): the classes sorted by id, the first half train and the rest
test: classes 1-100 (5,864 images) and 101-200 (5,924 images) for CUB.
``train_test_split.txt`` is the *classification* split (images of every class on both
sides) and is deliberately not used.
"""

from __future__ import annotations

from pathlib import Path

from raml_cli.data.dataset import Sample, zero_shot_split
from raml_cli.data.parsers.common import (
    ParsedDataset,
    find_folder_with,
    format_error,
    read_lines,
)
from raml_cli.errors import DataError

CUB_FILES = ("images.txt", "image_class_labels.txt", "classes.txt")


def find_cub(folder: Path) -> Path | None:
    """The folder holding ``images.txt`` and its siblings (``folder`` or one below it)."""
    return find_folder_with(Path(folder), CUB_FILES)


def parse_cub(folder: Path) -> ParsedDataset:
    """Read a CUB-layout dataset at or below ``folder``.

    Args:
        folder: ``CUB_200_2011/`` itself or a folder that contains it.

    Returns:
        The samples (paths relative to ``<meta>/images``), split zero-shot by class id.

    Raises:
        DataError: the annotation files are missing, malformed or inconsistent.
    """
    meta = find_cub(folder)
    if meta is None:
        raise DataError(f"No CUB-200-2011 annotations under {folder}: expected images.txt, "
                        "image_class_labels.txt and classes.txt (in the folder or in "
                        "CUB_200_2011/ inside it). Point at the extracted CUB_200_2011 folder.")
    paths = _read_pairs(meta / "images.txt", "<image_id> <relative image path>", int, str)
    labels = _read_pairs(meta / "image_class_labels.txt", "<image_id> <class_id>", int, int)
    names = _read_pairs(meta / "classes.txt", "<class_id> <class_name>", int, str)
    if not paths:
        raise DataError(f"{meta / 'images.txt'} lists no images. Replace it with the file "
                        "from the official archive.")
    missing_label = sorted(set(paths) - set(labels))
    if missing_label:
        raise DataError(f"{meta / 'image_class_labels.txt'} has no class for image id(s) "
                        f"{missing_label[:5]} of images.txt. The two files do not belong "
                        "together: replace both with the files from the same archive.")
    unknown = sorted({c for c in labels.values() if c not in names})
    if unknown:
        raise DataError(f"{meta / 'image_class_labels.txt'} uses class id(s) {unknown[:5]} "
                        f"that {meta / 'classes.txt'} does not define. Replace both with the "
                        "files from the same archive.")
    samples = [Sample(path=paths[i], label=labels[i]) for i in sorted(paths)]
    train, test = zero_shot_split(samples)
    return ParsedDataset(image_root=meta / "images", train=train, test=test, layout="cub",
                         class_names=dict(names))


def _read_pairs(path: Path, expected: str, key_type: type, value_type: type) -> dict:
    pairs: dict = {}
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise format_error(path, number, f"{line!r} has {len(parts)} field(s)", expected)
        try:
            key, value = key_type(parts[0]), value_type(parts[1].strip())
        except ValueError as err:
            raise format_error(path, number, f"{line!r} is not a number where one is "
                               "expected", expected) from err
        if key in pairs:
            raise format_error(path, number, f"id {key} appears twice", expected)
        pairs[key] = value
    return pairs
