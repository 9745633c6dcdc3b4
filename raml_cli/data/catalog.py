"""The dataset catalogue: what each named dataset is, where it comes from, how to read it.

Every dataset is one :class:`DatasetSpec` in a registry (:data:`DATASETS`, filled by
:func:`register_dataset`): its releases (sets of files with every known URL, byte size
and md5), the parser of its on-disk layout and the image counts it must have. A
dataset lives in ``ROOT/NAME/``; it is usable only once verified, which the marker file
``ROOT/NAME/raml-dataset.json`` records (:mod:`raml_cli.data.marker`, written last by
:func:`raml_cli.data.prepare.prepare_dataset`).

>>> dataset_names()
['toy', 'cub200', 'cars196', 'sop']
>>> get_spec("cub200").expected["train"]
SplitCounts(classes=100, images=5864)

:func:`load_dataset` is what the commands call: a catalogue name or the path of the user's
own data (see :mod:`raml_cli.data.custom`) in, :class:`DatasetSplits` out.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raml_cli.data.custom import load_custom
from raml_cli.data.dataset import DatasetSplits, second_half_classes
from raml_cli.data.marker import read_marker
from raml_cli.data.parsers import ParsedDataset, parse_cars, parse_cub, parse_sop
from raml_cli.errors import DataError, InputError
from raml_cli.progress import Reporter

DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release.

    Attributes:
        name: the file name, as published (also what ``--archive`` files are matched by).
        urls: every known URL, tried in order (mirrors after the original).
        md5: hex md5 of the file (``None``: unknown, the layout check must do).
        size: size in bytes (``None``: unknown).
    """

    name: str
    urls: tuple[str, ...]
    md5: str | None
    size: int | None = None


@dataclass(frozen=True)
class Release:
    """A set of files that together make a dataset (some datasets circulate in several)."""

    name: str
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class SplitCounts:
    """Number of classes and images a split must have."""

    classes: int
    images: int


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the catalogue knows about one dataset.

    Attributes:
        name: the catalogue name (``cub200``).
        title: what it is, for people.
        homepage: where it is described.
        parse: reads the extracted folder (annotations only), see :mod:`raml_cli.data.parsers`.
        releases: the file sets it can be fetched as, tried in order.
        expected: ``{"train": SplitCounts, "test": SplitCounts}`` the parse must give;
            ``None`` for generated datasets (their counts come from what was generated).
        generate: for a dataset made locally: ``generate(dest, seed, reporter)``.
        manual_hint: extra ways to get it by hand (appended to a failed download's message).
    """

    name: str
    title: str
    homepage: str
    parse: Callable[[Path], ParsedDataset]
    releases: tuple[Release, ...] = ()
    expected: Mapping[str, SplitCounts] | None = None
    generate: Callable[[Path, int, Reporter], None] | None = None
    manual_hint: str = ""
    citation: str = field(default="", repr=False)


#: The registry: catalogue name -> spec, in registration order.
DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the catalogue (names are unique)."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    DATASETS[spec.name] = spec
    return spec


def dataset_names() -> list[str]:
    """The catalogue's names, in registration order (``toy`` first)."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a catalogue name; :class:`InputError` naming the valid ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"Unknown dataset {name!r}.{_did_you_mean(name)} Choose one of: "
                         f"{', '.join(dataset_names())}.") from None


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), dataset_names(), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def download_command(name: str, root: Path = DEFAULT_ROOT, extra: str = "") -> str:
    """The exact ``raml download`` command for ``name`` under ``root``."""
    root_part = "" if Path(root) == DEFAULT_ROOT else f" --root {root}"
    return f"raml download {name}{root_part}{extra}"


def _generate_toy(dest: Path, seed: int, reporter: Reporter) -> None:
    from raml_cli.data.toy import generate_toy  # numpy/PIL only when generating

    generate_toy(dest, seed=seed, reporter=reporter)


register_dataset(DatasetSpec(
    name="toy",
    title="built-in toy fine-grained dataset (generated locally, no network)",
    homepage="docs/toy.md",
    parse=parse_cub,
    generate=_generate_toy,
))

register_dataset(DatasetSpec(
    name="cub200",
    title="CUB-200-2011 birds (200 classes, 11,788 images)",
    homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    parse=parse_cub,
    releases=(Release("official", (RemoteFile(
        name="CUB_200_2011.tgz",
        urls=(
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            "https://s3.amazonaws.com/fast-ai-imageclas/CUB_200_2011.tgz",
            "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz",
        ),
        md5="97eceeb196236b17998738112f37df78",
        size=1_150_585_339,
    ),)),),
    expected={"train": SplitCounts(100, 5_864), "test": SplitCounts(100, 5_924)},
    citation="Wah et al., The Caltech-UCSD Birds-200-2011 Dataset, CNS-TR-2011-001.",
))

register_dataset(DatasetSpec(
    name="cars196",
    title="Stanford Cars (196 classes, 16,185 images)",
    homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    parse=parse_cars,
    releases=(
        Release("car_ims", (
            RemoteFile("car_ims.tgz",
                       ("http://imagenet.stanford.edu/internal/car196/car_ims.tgz",),
                       md5="d5c8f0aa497503f355e17dc7886c3f14"),
            RemoteFile("cars_annos.mat",
                       ("http://imagenet.stanford.edu/internal/car196/cars_annos.mat",),
                       md5="b407c6086d669747186bd1d764ff9dbc"),
        )),
        Release("devkit", (
            RemoteFile("cars_train.tgz",
                       ("http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
                        "http://imagenet.stanford.edu/internal/car196/cars_train.tgz"),
                       md5="065e5b463ae28d29e77c1b4b166cfe61", size=979_269_282),
            RemoteFile("cars_test.tgz",
                       ("http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",),
                       md5="4ce7ebf6a94d07f1952d94dd34c4d501", size=977_350_468),
            RemoteFile("car_devkit.tgz",
                       ("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",),
                       md5="c3b158d763b6e2245038c8ad08e45376", size=330_960),
            RemoteFile("cars_test_annos_withlabels.mat",
                       ("http://ai.stanford.edu/~jkrause/car196/"
                        "cars_test_annos_withlabels.mat",),
                       md5="b0a2b23655a3edd16d84508592a98d10", size=185_758),
        )),
    ),
    expected={"train": SplitCounts(98, 8_054), "test": SplitCounts(98, 8_131)},
    manual_hint=("or a one-folder-per-class mirror (e.g. Kaggle's "
                 "stanford-car-dataset-by-classes-folder, folders named after the classes), "
                 "extracted: --archive PATH/TO/FOLDER"),
    citation="Krause et al., 3D Object Representations for Fine-Grained Categorization, "
             "3dRR 2013.",
))

register_dataset(DatasetSpec(
    name="sop",
    title="Stanford Online Products (22,634 classes, 120,053 images)",
    homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
    parse=parse_sop,
    releases=(Release("official", (RemoteFile(
        name="Stanford_Online_Products.zip",
        urls=(
            "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            "https://drive.google.com/uc?export=download&id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8",
        ),
        md5="7f73d41a2f44250d4779881525aea32e",
        size=3_083_860_082,
    ),)),),
    expected={"train": SplitCounts(11_318, 59_551), "test": SplitCounts(11_316, 60_502)},
    citation="Oh Song et al., Deep Metric Learning via Lifted Structured Feature Embedding, "
             "CVPR 2016.",
))


def dataset_dir(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """The folder of a catalogue dataset: ``ROOT/NAME``."""
    return Path(root) / name


def splits_from_parsed(name: str, parsed: ParsedDataset) -> DatasetSplits:
    """The protocol's splits of a parsed dataset (``val`` = second half of training classes)."""
    return DatasetSplits(name=name, root=parsed.image_root, train=parsed.train,
                         val=second_half_classes(parsed.train), test=parsed.test,
                         extra={"class_names": parsed.class_names, "layout": parsed.layout})


def load_verified(name: str, root: Path = DEFAULT_ROOT) -> DatasetSplits:
    """Load a catalogue dataset that ``raml download`` verified.

    Raises:
        DataError: not downloaded (the message names the ``raml download`` command to run),
            or its annotations changed since verification.
    """
    spec = get_spec(name)
    folder = dataset_dir(name, root)
    marker = read_marker(folder, name)
    command = download_command(name, root)
    if marker is None:
        raise DataError(f"The dataset {name} is not downloaded and verified in {folder}. Run "
                        f"`{command}` first.")
    data_dir = folder / marker.get("data_dir", ".")  # an absolute data_dir replaces folder
    try:
        parsed = spec.parse(data_dir)
    except DataError as err:
        raise DataError(f"The dataset {name} in {folder} was verified but can no longer be "
                        f"read ({err}) Run `{command}` to fetch it again.") from err
    splits = splits_from_parsed(name, parsed)
    if splits.summary() != marker["splits"]:
        raise DataError(f"The dataset {name} in {data_dir} changed since it was verified "
                        f"(now {splits.summary()}, verified {marker['splits']}). Run "
                        f"`{command}` to fetch it again.")
    return splits


def load_dataset(spec: str, root: Path = DEFAULT_ROOT) -> DatasetSplits:
    """Resolve a dataset argument (``--dataset``) to its splits.

    Args:
        spec: a catalogue name (``toy``, ``cub200``, ``cars196``, ``sop``), which must have
            been downloaded and verified by ``raml download``; or the path of the user's own
            data: an image folder (one sub-folder per class) or a CSV ``path,label[,split]``.
        root: the folder that holds the catalogue's datasets.

    Returns:
        :class:`DatasetSplits`; sample paths are relative to its ``root``.

    Raises:
        DataError: the dataset is not downloaded (naming the command to run), or the user's
            data is malformed or has missing images.
        InputError: ``spec`` is neither a name nor an existing path.
    """
    if spec in DATASETS:
        return load_verified(spec, Path(root))
    path = Path(spec).expanduser()
    if path.exists():
        return load_custom(path)
    raise InputError(f"{spec!r} is neither a dataset name nor an existing path."
                     f"{_did_you_mean(spec)} Give one of {', '.join(dataset_names())} (after "
                     "`raml download NAME`), or the path of an image folder (one sub-folder "
                     "per class) or of a CSV of path,label[,split].")
