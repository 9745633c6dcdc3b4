"""Your own data: an image folder (one sub-folder per class) or a CSV ``path,label[,split]``.

Image folder::

    my_data/<class name>/<any sub-folders>/<image>.jpg

Every image file (by suffix: .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff, .ppm, .pgm)
under a class folder belongs to that class. Class folders are sorted by name ("natural"
order: ``class2`` before ``class10``), numbered 0, 1, ... in that order, and split
zero-shot: the first half of the classes train, the rest test. A folder in the
CUB-200-2011 layout (``images.txt`` and its siblings at the top) is read as CUB.

CSV (UTF-8, comma separated)::

    path,label,split        <- optional header; with it the columns may be in any order
    birds/a.jpg,sparrow,train
    birds/b.jpg,sparrow,val
    birds/c.jpg,gull,test

- ``path``: relative to the CSV's folder, or absolute.
- ``label``: integers (kept as the class ids, 0 to 2^63 - 1) or names (sorted naturally
  and numbered 0, 1, ...).
- every image appears on one row only (a duplicated row is an error naming both lines).
- ``split`` (optional): ``train``, ``val`` or ``test``. ``val`` rows are training rows held
  out for validation, so they count in ``train`` too and must be whole classes. Without a
  split column the zero-shot rule applies; without ``val`` rows, ``val`` is the second half
  of the training classes (as for the catalogue's datasets).

What is checked when the data is loaded: that every listed image exists and is a readable
file (one ``stat`` per image, cheap); images are not decoded here, a corrupt image is
reported by path when it is loaded (``raml_cli.data.images``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from raml_cli.data.dataset import DatasetSplits, Sample, second_half_classes, zero_shot_split
from raml_cli.data.parsers.common import IMAGE_SUFFIXES, check_images_exist
from raml_cli.data.parsers.cub import find_cub, parse_cub
from raml_cli.errors import DataError

SPLIT_VALUES = ("train", "val", "test")
#: Class ids are int64 (embeddings files store them so).
INT64_MAX = 2**63 - 1


def load_custom(path: Path, check_images: bool = True) -> DatasetSplits:
    """Read the user's own dataset from an image folder or a CSV file.

    Args:
        path: a folder (one sub-folder per class, or the CUB layout) or a ``.csv`` file.
        check_images: check that every image exists and is readable (see module docstring).

    Returns:
        The splits; ``name`` is ``str(path)``, ``root`` the folder sample paths are relative
        to, ``extra["class_names"]`` maps class id -> name.

    Raises:
        DataError: the path is neither, the layout is wrong, or images are missing.
    """
    path = Path(path)
    if path.is_dir():
        splits = _load_folder(path)
    elif path.is_file():
        splits = _load_csv(path)
    else:
        raise DataError(f"{path} does not exist. Give a dataset name or the path of an image "
                        "folder (one sub-folder per class) or a CSV of path,label[,split].")
    if check_images:
        check_images_exist(splits.root, splits.train + splits.test, str(path),
                           "Restore or remove them (fix the CSV, or delete the broken files), "
                           "then run again.")
    return splits


def natural_key(name: str) -> list:
    """Sort key that orders the digit runs of ``name`` as numbers (``a2`` < ``a10``)."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", name)]


def _load_folder(folder: Path) -> DatasetSplits:
    if find_cub(folder) == folder:
        parsed = parse_cub(folder)
        return DatasetSplits(name=str(folder), root=parsed.image_root, train=parsed.train,
                             val=second_half_classes(parsed.train), test=parsed.test,
                             extra={"class_names": parsed.class_names, "source": "cub"})
    loose = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DataError(f"{folder} holds {len(loose)} image(s) outside any class folder (e.g. "
                        f"{loose[0]}). An image folder needs one sub-folder per class: move "
                        "them into their class folders, or list the data in a CSV instead.")
    class_folders = sorted((p for p in folder.iterdir()
                            if p.is_dir() and not p.name.startswith(".")),
                           key=lambda p: natural_key(p.name))
    samples, names = [], {}
    for class_folder in class_folders:
        images = sorted(p for p in class_folder.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in
                                    p.relative_to(folder).parts))
        if not images:
            continue
        _check_utf8_names(folder, images)
        label = len(names)
        names[label] = class_folder.name
        samples.extend(Sample(path=p.relative_to(folder).as_posix(), label=label)
                       for p in images)
    if len(names) < 2:
        raise DataError(f"{folder} has {len(names)} class folder(s) with images; a zero-shot "
                        "split needs at least 2 classes (one sub-folder of images per class).")
    train, test = zero_shot_split(samples)
    return DatasetSplits(name=str(folder), root=folder, train=train,
                         val=second_half_classes(train), test=test,
                         extra={"class_names": names, "source": "image_folder"})


def _check_utf8_names(folder: Path, images: list[Path]) -> None:
    for image in images:
        name = image.relative_to(folder).as_posix()
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise DataError(f"{folder}: the file name {shown} is not valid UTF-8, and "
                            "embeddings files store names as UTF-8. Rename the file (or "
                            "delete it), then run again.") from None


def _load_csv(path: Path) -> DatasetSplits:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {path} as a UTF-8 text file ({err}). Give a CSV of "
                        "path,label[,split] or an image folder.") from err
    rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), start=1)
            if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path} is empty. It should list path,label[,split], one image a row.")
    columns = {"path": 0, "label": 1, "split": 2}
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "path" in header and "label" in header:
        columns = {name: header.index(name) for name in ("path", "label", "split")
                   if name in header}
        rows = rows[1:]
    needed = max(columns["path"], columns["label"]) + 1
    entries = []
    for number, row in rows:
        if len(row) < needed:
            raise DataError(f"{path}, line {number}: {len(row)} column(s). Each row should "
                            "read path,label or path,label,split.")
        split = ""
        if "split" in columns and columns["split"] < len(row):
            split = row[columns["split"]].strip().lower()
            if split not in SPLIT_VALUES:
                raise DataError(f"{path}, line {number}: split {split!r} is not one of "
                                f"{', '.join(SPLIT_VALUES)}. Fix the value, or leave the "
                                "split column out to split by class automatically.")
        entries.append((number, row[columns["path"]].strip(), row[columns["label"]].strip(),
                        split))
    if not entries:
        raise DataError(f"{path} has a header but no rows. List one image per row.")
    _check_unique_paths(path, entries)
    labels, names = _label_ids(path, entries)
    samples = [(Sample(path=p, label=labels[raw]), split) for _, p, raw, split in entries]
    return _csv_splits(path, samples, names)


def _check_unique_paths(path: Path, entries: list[tuple[int, str, str, str]]) -> None:
    """An image listed twice would count twice in every metric (or, under two labels, put
    one image in two classes, possibly one of training and one of test): refuse it."""
    first_line: dict[str, int] = {}
    repeated: list[tuple[str, int, int]] = []
    for number, image, _, _ in entries:
        key = Path(image).as_posix()
        if key in first_line:
            repeated.append((image, first_line[key], number))
        else:
            first_line[key] = number
    if repeated:
        shown = "; ".join(f"{image!r} on lines {a} and {b}" for image, a, b in repeated[:5])
        more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise DataError(f"{path} lists {len(repeated)} image(s) more than once: {shown}{more}. "
                        "Each image must appear on one row with one label: remove the "
                        "duplicate rows.")


def _label_ids(path: Path, entries: list[tuple[int, str, str, str]]
               ) -> tuple[dict[str, int], dict[int, str]]:
    raw_labels = {raw for _, _, raw, _ in entries}
    empty = [number for number, _, raw, _ in entries if not raw]
    if empty:
        raise DataError(f"{path}, line {empty[0]}: the label is empty. Every row needs a class.")
    if all(re.fullmatch(r"\d+", raw) for raw in raw_labels):
        labels = {raw: int(raw) for raw in raw_labels}
        too_large = [(number, raw) for number, _, raw, _ in entries
                     if labels[raw] > INT64_MAX]
        if too_large:
            raise DataError(f"{path}, line {too_large[0][0]}: the label {too_large[0][1]} is "
                            f"beyond the largest class id, {INT64_MAX} (2^63 - 1, int64). "
                            "Number the classes with smaller integers, or use class names.")
    else:
        labels = {raw: k for k, raw in enumerate(sorted(raw_labels, key=natural_key))}
    return labels, {k: raw for raw, k in labels.items()}


def _csv_splits(path: Path, samples: list[tuple[Sample, str]],
                names: dict[int, str]) -> DatasetSplits:
    root = path.parent
    given = {split for _, split in samples}
    extra = {"class_names": names, "source": "csv"}
    if given == {""}:
        plain = [s for s, _ in samples]
        train, test = zero_shot_split(plain)
        if not train or not test:
            raise DataError(f"{path} has {len({s.label for s in plain})} class(es); a zero-shot "
                            "split needs at least 2. Add classes or a split column.")
        return DatasetSplits(name=str(path), root=root, train=train,
                             val=second_half_classes(train), test=test, extra=extra)
    if "" in given:
        raise DataError(f"{path}: some rows have a split and some do not. Give every row a "
                        "split (train, val or test) or none.")
    train = [s for s, split in samples if split in ("train", "val")]
    val = [s for s, split in samples if split == "val"]
    test = [s for s, split in samples if split == "test"]
    mixed = {s.label for s in val} & {s.label for s, split in samples if split == "train"}
    if mixed:
        raise DataError(f"{path}: class(es) {sorted(names[k] for k in mixed)[:5]} have both "
                        "train and val rows. Validation holds out whole classes (zero-shot): "
                        "mark all rows of a class val, or none.")
    if not val:
        val = second_half_classes(train)
    return DatasetSplits(name=str(path), root=root, train=train, val=val, test=test, extra=extra)
