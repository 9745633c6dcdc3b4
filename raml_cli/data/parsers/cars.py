"""Stanford Cars (Cars196) in the three layouts that circulate.

1. ``car_ims`` (the metric-learning release): ``car_ims/NNNNNN.jpg`` (16,185 images) and
   ``cars_annos.mat``, a struct array ``annotations`` with fields ``relative_im_path``,
   ``bbox_x1..bbox_y2``, ``class`` (1-196), ``test``. Third-party text conversions of
   ``cars_annos.mat`` are accepted in its place: ``cars_annos.txt`` rows
   ``car_ims/NNNNNN.jpg,class,test`` or ``cars_annos.csv`` rows
   ``'car_ims/NNNNNN.jpg',x1,y1,x2,y2,class,TRUE|FALSE,...``.
2. ``devkit`` (the classification release): ``cars_train/NNNNN.jpg`` (8,144),
   ``cars_test/NNNNN.jpg`` (8,041), ``devkit/cars_train_annos.mat`` (fields ``bbox_*``,
   ``class``, ``fname``) and ``cars_test_annos_withlabels.mat`` (the same for the test
   images; the devkit's own ``cars_test_annos.mat`` has no classes).
3. ``class_folders`` (mirrors such as Kaggle's "stanford-car-dataset-by-classes-folder"):
   any folders of images named after the classes, e.g. ``train/<class name>/*.jpg`` and
   ``test/<class name>/*.jpg``. Folder names are matched to the official names of
   ``cars_meta.mat`` ignoring case and punctuation (``Ram C-V`` = ``Ram C/V``), or are the
   class numbers 1-196.

Whatever the layout, the zero-shot split is by class id (METHOD.md): classes 1-98 train
(8,054 images), 99-196 test (8,131). The release's own train/test split (a
classification split) is ignored. ``.mat`` files are read with ``scipy.io.loadmat``.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from raml_cli.data.dataset import Sample, zero_shot_split
from raml_cli.data.parsers.cars_names import CARS196_CLASS_NAMES
from raml_cli.data.parsers.common import (
    IMAGE_SUFFIXES,
    ParsedDataset,
    find_folder_with,
    format_error,
    read_lines,
)
from raml_cli.errors import DataError

NUM_CLASSES = len(CARS196_CLASS_NAMES)
WITH_LABELS = "cars_test_annos_withlabels.mat"


def parse_cars(folder: Path) -> ParsedDataset:
    """Read Stanford Cars at or below ``folder`` in whichever layout it is.

    Raises:
        DataError: no known layout found, or its annotation files are malformed.
    """
    folder = Path(folder)
    found = find_folder_with(folder, ["cars_annos.mat"])
    if found is not None:
        return _split(found, _read_annos_mat(found / "cars_annos.mat"), "car_ims")
    found = find_folder_with(folder, ["devkit/cars_train_annos.mat"])
    if found is not None:
        return _parse_devkit(found)
    for name in ("cars_annos.txt", "cars_annos.csv"):
        found = find_folder_with(folder, [name])
        if found is not None:
            return _split(found, _read_annos_text(found / name), "car_ims")
    return _parse_class_folders(folder)


def _split(image_root: Path, samples: list[Sample], layout: str) -> ParsedDataset:
    bad = sorted({s.label for s in samples if not 1 <= s.label <= NUM_CLASSES})
    if bad:
        raise DataError(f"The Cars196 annotations under {image_root} use class ids {bad[:5]} "
                        f"outside 1-{NUM_CLASSES}. They are not the official Cars196 "
                        "annotations: replace them.")
    train, test = zero_shot_split(samples)
    names = {k + 1: name for k, name in enumerate(CARS196_CLASS_NAMES)}
    return ParsedDataset(image_root=image_root, train=train, test=test, layout=layout,
                         class_names=names)


def load_mat_annotations(path: Path) -> list[dict]:
    """The ``annotations`` struct array of a MATLAB v5 ``.mat`` file, one dict per element.

    Raises:
        DataError: scipy is missing, or the file is not a readable ``.mat`` file with an
            ``annotations`` struct array.
    """
    try:
        import scipy.io
    except ImportError as err:  # scipy is a dependency; this guards a broken install
        raise DataError(f"Reading {path.name} needs scipy (MATLAB files): run "
                        "`pip install scipy` and try again.") from err
    try:
        contents = scipy.io.loadmat(str(path), squeeze_me=True)
    except FileNotFoundError as err:
        raise DataError(f"{path} is missing. Fetch it again (see `raml download cars196`)."
                        ) from err
    except Exception as err:  # scipy raises ValueError/TypeError/NotImplementedError/...
        raise DataError(f"Cannot read {path} as a MATLAB file ({err}). It is truncated or "
                        "not the official file: fetch it again.") from err
    annotations = contents.get("annotations")
    fields = getattr(getattr(annotations, "dtype", None), "names", None)
    if not fields:
        raise DataError(f"{path} holds no 'annotations' struct array, so it is not a Cars196 "
                        "annotation file. Fetch the official one.")
    records = annotations.reshape(-1)
    return [{name: record[name] for name in fields} for record in records]


def _mat_field(path: Path, record: dict, name: str) -> object:
    if name not in record:
        raise DataError(f"{path}: the annotations have no '{name}' field (they have "
                        f"{sorted(record)}). It is not the expected Cars196 file: fetch the "
                        "official one.")
    return record[name]


def _read_annos_mat(path: Path) -> list[Sample]:
    return [Sample(path=str(_mat_field(path, record, "relative_im_path")),
                   label=int(_mat_field(path, record, "class")))
            for record in load_mat_annotations(path)]


def _parse_devkit(found: Path) -> ParsedDataset:
    labelled = next((p for p in (found / WITH_LABELS, found / "devkit" / WITH_LABELS)
                     if p.exists()), None)
    if labelled is None:
        raise DataError(f"The Cars196 devkit in {found} has no {WITH_LABELS}: the devkit's "
                        "cars_test_annos.mat has no classes, so the test images cannot be "
                        f"labelled. Fetch {WITH_LABELS} (md5 b0a2b23655a3edd16d84508592a98d10, "
                        f"http://ai.stanford.edu/~jkrause/car196/{WITH_LABELS}) into {found}.")
    samples = []
    for subfolder, annos in (("cars_train", found / "devkit" / "cars_train_annos.mat"),
                             ("cars_test", labelled)):
        for record in load_mat_annotations(annos):
            fname = str(_mat_field(annos, record, "fname"))
            label = int(_mat_field(annos, record, "class"))
            samples.append(Sample(path=f"{subfolder}/{fname}", label=label))
    return _split(found, samples, "devkit")


def _read_annos_text(path: Path) -> list[Sample]:
    expected = ("car_ims/NNNNNN.jpg,class,test (cars_annos.txt) or "
                "'car_ims/NNNNNN.jpg',x1,y1,x2,y2,class,TRUE|FALSE,... (cars_annos.csv)")
    samples = []
    for number, row in enumerate(csv.reader(read_lines(path)), start=1):
        if len(row) == 3:
            class_field = row[1]
        elif len(row) >= 7:
            class_field = row[5]
        else:
            raise format_error(path, number, f"{len(row)} column(s)", expected)
        try:
            label = int(class_field)
        except ValueError as err:
            raise format_error(path, number, f"class {class_field!r} is not a number",
                               expected) from err
        samples.append(Sample(path=row[0].strip().strip("'\""), label=label))
    return samples


def normalise_class_name(name: str) -> str:
    """A class or folder name reduced to lower-case letters and digits."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_ID_BY_NAME = {normalise_class_name(name): k + 1 for k, name in enumerate(CARS196_CLASS_NAMES)}


def class_id_of_folder(name: str) -> int | None:
    """The class id a mirror's folder name stands for, or ``None`` if it is no class."""
    if name.isdigit() and 1 <= int(name) <= NUM_CLASSES:
        return int(name)
    return _ID_BY_NAME.get(normalise_class_name(name))


def _parse_class_folders(folder: Path) -> ParsedDataset:
    samples, unknown = [], set()
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        images = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not images or Path(directory) == folder:
            continue
        label = class_id_of_folder(Path(directory).name)
        if label is None:
            unknown.add(Path(directory).name)
            continue
        relative = Path(directory).relative_to(folder).as_posix()
        samples.extend(Sample(path=f"{relative}/{f}", label=label) for f in images)
    if unknown:
        shown = ", ".join(repr(n) for n in sorted(unknown)[:5])
        raise DataError(f"{folder} holds image folders that are not Cars196 classes: {shown}"
                        f"{' ...' if len(unknown) > 5 else ''}. A one-folder-per-class mirror "
                        "must name its folders after the official class names (cars_meta.mat) "
                        "or the class numbers 1-196.")
    if not samples:
        raise DataError(f"No Stanford Cars layout found in {folder}. Expected car_ims/ with "
                        "cars_annos.mat, or cars_train/ + cars_test/ + devkit/ with "
                        f"{WITH_LABELS}, or one folder of images per class.")
    return _split(folder, samples, "class_folders")
