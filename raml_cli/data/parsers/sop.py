"""The Stanford Online Products layout.

::

    Stanford_Online_Products/Ebay_train.txt   image_id class_id super_class_id path
    Stanford_Online_Products/Ebay_test.txt    (same header)
    Stanford_Online_Products/<super_class>_final/<class images>.JPG

The split is the official one (METHOD.md): Ebay_train.txt, 11,318 classes and 59,551
images; Ebay_test.txt, 11,316 classes and 60,502 images. The classes are disjoint.
"""

from __future__ import annotations

from pathlib import Path

from raml_cli.data.dataset import Sample
from raml_cli.data.parsers.common import (
    ParsedDataset,
    find_folder_with,
    format_error,
    read_lines,
)
from raml_cli.errors import DataError

SOP_FILES = ("Ebay_train.txt", "Ebay_test.txt")
SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def find_sop(folder: Path) -> Path | None:
    """The folder holding ``Ebay_train.txt`` and ``Ebay_test.txt`` (at or below ``folder``)."""
    return find_folder_with(Path(folder), SOP_FILES)


def parse_sop(folder: Path) -> ParsedDataset:
    """Read the Stanford Online Products annotation files at or below ``folder``.

    Raises:
        DataError: a file is missing or malformed, or a class is in both splits.
    """
    meta = find_sop(folder)
    if meta is None:
        raise DataError(f"No Stanford Online Products annotations under {folder}: expected "
                        "Ebay_train.txt and Ebay_test.txt (in the folder or in "
                        "Stanford_Online_Products/ inside it). Point at the extracted folder.")
    train = _read_split(meta / "Ebay_train.txt")
    test = _read_split(meta / "Ebay_test.txt")
    shared = {s.label for s in train} & {s.label for s in test}
    if shared:
        raise DataError(f"Ebay_train.txt and Ebay_test.txt in {meta} share {len(shared)} "
                        f"class id(s) (e.g. {sorted(shared)[:3]}); the official split has "
                        "disjoint classes. Replace both files with the official ones.")
    return ParsedDataset(image_root=meta, train=train, test=test, layout="ebay")


def _read_split(path: Path) -> list[Sample]:
    lines = read_lines(path)
    expected = "image_id class_id super_class_id path"
    if not lines or lines[0].split() != SOP_HEADER:
        raise format_error(path, 1, "the header is missing or different", expected)
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(maxsplit=3)
        if len(parts) != 4:
            raise format_error(path, number, f"{line!r} has {len(parts)} field(s)", expected)
        try:
            label = int(parts[1])
        except ValueError as err:
            raise format_error(path, number, f"class id {parts[1]!r} is not a number",
                               expected) from err
        samples.append(Sample(path=parts[3].strip(), label=label))
    return samples
