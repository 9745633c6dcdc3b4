"""The in-memory form every dataset resolves to: samples per split.

A :class:`Sample` is an image path relative to the dataset's image root and an
integer class id. :class:`DatasetSplits` holds the three splits of the protocol
(METHOD.md, "Splits and protocol"):

- ``train``: every image of the training classes;
- ``test``: every image of the unseen test classes (zero-shot);
- ``val``: the images of the second half of the training classes, for validation
  and hyper-parameter search;
- ``fit`` (derived): ``train`` minus ``val``, what a run that validates trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raml_cli.errors import InputError

SPLIT_NAMES = ("train", "val", "test", "fit")


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` relative to the image root, ``label`` its class id (-1: unknown)."""

    path: str
    label: int


@dataclass
class DatasetSplits:
    """A dataset resolved to lists of samples per split.

    Attributes:
        name: the catalogue name (``cub200``) or the user's path.
        root: the folder that sample paths are relative to.
        train, val, test: the splits (see the module docstring).
    """

    name: str
    root: Path
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """The samples of ``train``, ``val``, ``test`` or ``fit`` (= train minus val)."""
        if name == "fit":
            val_classes = {s.label for s in self.val}
            return [s for s in self.train if s.label not in val_classes]
        if name in ("train", "val", "test"):
            return list(getattr(self, name))
        raise InputError(f"Unknown split {name!r}. Choose one of: {', '.join(SPLIT_NAMES)}.")

    def summary(self) -> dict[str, dict[str, int]]:
        """Classes and images per split, as printed by ``raml download --json``."""
        return {
            name: {"classes": len({s.label for s in samples}), "images": len(samples)}
            for name, samples in (("train", self.train), ("val", self.val), ("test", self.test))
        }


def second_half_classes(samples: list[Sample]) -> list[Sample]:
    """The samples whose class is in the second half of the sorted class ids (the ``val`` rule)."""
    classes = sorted({s.label for s in samples})
    held_out = set(classes[len(classes) // 2:])
    return [s for s in samples if s.label in held_out]


def zero_shot_split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Split by class: sorted class ids, the first half train, the rest test."""
    classes = sorted({s.label for s in samples})
    train_classes = set(classes[: (len(classes) + 1) // 2])
    train = [s for s in samples if s.label in train_classes]
    test = [s for s in samples if s.label not in train_classes]
    return train, test
