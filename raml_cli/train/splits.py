"""The images a training run learns from and validates on.

A run that validates (``val_every > 0``) trains on ``fit`` (= ``train`` minus ``val``, the
second half of the training classes) and validates on ``val``; otherwise it trains on
the whole ``train`` split (DESIGN.md, "Datasets"). Test classes are never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raml_cli.data.dataset import Sample
from raml_cli.errors import DataError


@dataclass(frozen=True)
class TrainingSplits:
    """What a run trains and validates on.

    Attributes:
        name: the dataset's name (catalogue name, or the user's folder or CSV name).
        image_root: the folder the samples' paths are relative to.
        train_split: ``fit`` or ``train``.
        samples: the training images.
        val_samples: the validation images (empty when the run does not validate).
    """

    name: str
    image_root: Path
    train_split: str
    samples: list[Sample]
    val_samples: list[Sample]


def load_training_splits(dataset: str, root: Path, val_every: int) -> TrainingSplits:
    """Load ``dataset`` (a catalogue name or a path) and choose the run's splits.

    Raises:
        DataError: a ``val`` split of fewer than 2 classes for a run that validates, or
            an empty training split.
    """
    from raml_cli.data.catalog import load_dataset

    splits = load_dataset(dataset, Path(root))
    train_split = "fit" if val_every else "train"
    samples = splits.split(train_split)
    val_samples = splits.split("val") if val_every else []
    val_classes = len({s.label for s in val_samples})
    if val_every and val_classes < 2:
        raise DataError(
            f"--val-every needs a val split of at least 2 classes, but {splits.name} has "
            f"{val_classes}. Use --val-every 0 to train on the whole train split without "
            "validation."
        )
    if not samples:
        raise DataError(f"The {train_split} split of {splits.name} holds no image.")
    return TrainingSplits(name=splits.name, image_root=Path(splits.root),
                          train_split=train_split, samples=samples, val_samples=val_samples)
