"""Class-balanced batches, sharded across processes, with per-image random seeds.

Metric learning needs several images of a class in one batch (the positive is the
hardest same-class image of the batch). :class:`ClassBalancedSampler` plans an
epoch as follows (reference: ``samples_per_class`` = 4):

1. every class with at least ``samples_per_class`` images is shuffled and cut into
   groups of exactly ``samples_per_class`` images (the remainder waits for another
   epoch; classes with fewer images are never used and reported);
2. the groups of all classes are shuffled and concatenated;
3. the sequence is cut to ``images_per_epoch`` anchors (rounded down to whole
   micro-batches) and into micro-batches of ``batch_size`` anchors
   (``batch_size / samples_per_class`` groups each).

Under torchrun, process ``rank`` of ``world_size`` takes micro-batches
``rank, rank + world_size, ...`` of that one global plan (every process computes
the same plan from the seed), and every process runs the same number of them.

Randomness is a function of ``(seed, epoch, stream)`` only
(:func:`epoch_generator`), and each image's augmentation gets its own seed
(:func:`item_seeds`, applied by :class:`SeededDataset`), so micro-batch ``k`` of an
epoch is the same whether the epoch ran from its start or was resumed at ``k``,
and whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from raml_cli.errors import DataError, InputError

_STREAMS = {"batches": 1, "augment": 2, "pool": 3, "negatives": 4}


def epoch_generator(seed: int, epoch: int, stream: str) -> np.random.Generator:
    """An independent NumPy generator for one purpose (``stream``) of one epoch.

    >>> int(epoch_generator(0, 1, "batches").integers(100)) == int(
    ...     epoch_generator(0, 1, "batches").integers(100))
    True
    """
    key = _STREAMS.get(stream)
    if key is None:
        key = int.from_bytes(stream.encode("utf-8")[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([int(seed) % (2**63), int(epoch), key])


def item_seeds(seed: int, epoch: int, count: int, stream: str = "augment") -> np.ndarray:
    """``count`` augmentation seeds (int64 in [0, 2^31)) for the positions of an epoch."""
    return epoch_generator(seed, epoch, stream).integers(0, 2**31 - 1, size=count,
                                                         dtype=np.int64)


class SeededDataset(Dataset):
    """Wrap a dataset so that item ``(index, seed)`` is drawn with the torch RNG at ``seed``.

    The global torch RNG of the process is left untouched (``torch.random.fork_rng``),
    so the result of ``dataset[(i, s)]`` depends on ``i`` and ``s`` only: not on the
    worker that decodes it or on what was decoded before.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.dataset[int(index)]


@dataclass
class ClassBalancedSampler:
    """Plans the anchors of each epoch as class groups (see the module docstring).

    Attributes:
        labels: class id of every image of the training split (positions are indices).
        samples_per_class: images of one class that sit together in a micro-batch.
        batch_size: anchors per micro-batch (a multiple of ``samples_per_class``).
        images_per_epoch: anchors per epoch over all processes (0: as many as the class
            groups allow); rounded down to whole micro-batches of every process.
    """

    labels: Sequence[int]
    samples_per_class: int = 4
    batch_size: int = 20
    images_per_epoch: int = 0
    usable_classes: list[int] = field(init=False)
    dropped_classes: list[int] = field(init=False)

    def __post_init__(self) -> None:
        spc, bs = int(self.samples_per_class), int(self.batch_size)
        if spc < 2:
            raise InputError(f"--samples-per-class must be at least 2 (the positive is another "
                             f"image of the anchor's class), got {spc}.")
        if bs < spc or bs % spc:
            raise InputError(
                f"--batch-size ({bs}) must be a multiple of --samples-per-class ({spc}): a "
                f"micro-batch holds whole groups of {spc} images of one class. Try "
                f"--batch-size {max(spc, bs // spc * spc)}."
            )
        if self.images_per_epoch < 0:
            raise InputError(f"--images-per-epoch must be >= 0, got {self.images_per_epoch}.")
        labels = np.asarray(self.labels, dtype=np.int64)
        self._labels = labels
        classes, counts = np.unique(labels, return_counts=True)
        self.usable_classes = [int(c) for c, n in zip(classes, counts, strict=True) if n >= spc]
        self.dropped_classes = [int(c) for c, n in zip(classes, counts, strict=True) if n < spc]
        self._members = {c: np.flatnonzero(labels == c) for c in self.usable_classes}
        self._groups = sum(len(m) // spc for m in self._members.values())
        if len(self.usable_classes) < 2:
            most = int(counts.max()) if len(counts) else 0
            raise DataError(
                f"Too few images per class for the sampler: {len(self.usable_classes)} of "
                f"{len(classes)} classes have at least --samples-per-class {spc} images (the "
                f"largest class has {most}), and at least 2 such classes are needed. Lower "
                "--samples-per-class or use a dataset with more images per class."
            )

    @property
    def anchors_available(self) -> int:
        """Anchors one epoch could hold before ``images_per_epoch`` caps it."""
        return self._groups * self.samples_per_class

    def num_batches(self, world_size: int = 1) -> int:
        """Micro-batches per process per epoch (the same for every epoch and seed)."""
        anchors = self.anchors_available
        if self.images_per_epoch:
            anchors = min(anchors, self.images_per_epoch)
        return anchors // (self.batch_size * world_size)

    def check_fits(self, world_size: int = 1) -> None:
        """Raise :class:`DataError` when an epoch would not fill one micro-batch per process."""
        if self.num_batches(world_size) < 1:
            raise DataError(
                f"Too few images per class for the sampler: the classes hold "
                f"{self.anchors_available} images in whole groups of --samples-per-class "
                f"{self.samples_per_class}, fewer than one micro-batch of --batch-size "
                f"{self.batch_size} per process ({world_size} process(es)). Lower --batch-size "
                "or --samples-per-class, or use more images."
            )

    def epoch_batches(self, seed: int, epoch: int, world_size: int = 1) -> list[list[int]]:
        """The global plan of an epoch: ``num_batches(world_size) * world_size`` micro-batches.

        Each micro-batch is a list of ``batch_size`` image indices, in groups of
        ``samples_per_class`` consecutive images of one class.
        """
        rng = epoch_generator(seed, epoch, "batches")
        spc = self.samples_per_class
        groups: list[np.ndarray] = []
        for c in self.usable_classes:
            members = rng.permutation(self._members[c])
            whole = len(members) // spc * spc
            groups.extend(members[:whole].reshape(-1, spc))
        order = rng.permutation(len(groups))
        flat = np.concatenate([groups[i] for i in order]) if groups else np.zeros(0, np.int64)
        total = self.num_batches(world_size) * world_size
        flat = flat[: total * self.batch_size]
        return [flat[i * self.batch_size:(i + 1) * self.batch_size].tolist()
                for i in range(total)]

    @staticmethod
    def shard(batches: Sequence[Any], rank: int, world_size: int) -> list[Any]:
        """Micro-batches ``rank, rank + world_size, ...`` (an equal share per process)."""
        per_rank = len(batches) // world_size
        return list(batches[rank::world_size][:per_rank])


class _CurrentBatches:
    """A batch sampler whose batches are swapped between epochs (see :class:`EpochLoader`)."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def __iter__(self) -> Any:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class EpochLoader:
    """One DataLoader for every epoch, so worker processes start once, not once per epoch.

    Each epoch hands its own list of batches (lists of dataset keys) to :meth:`epoch`;
    with ``workers > 0`` the workers persist between epochs (starting them costs about a
    second, a large share of a short epoch). Keys carry everything random
    (:class:`SeededDataset`), so reusing workers changes no result.
    """

    def __init__(self, dataset: Any, workers: int = 0, pin_memory: bool = False) -> None:
        from torch.utils.data import DataLoader

        self._current = _CurrentBatches()
        self.loader = DataLoader(dataset, batch_sampler=self._current, num_workers=workers,
                                 pin_memory=pin_memory, persistent_workers=workers > 0)

    def epoch(self, batches: Sequence[Sequence[Any]]) -> Any:
        """Iterate over ``batches`` (collated as the DataLoader does)."""
        self._current.batches = list(batches)
        return iter(self.loader)
