"""The spread of an embedding space: how far apart its unit vectors lie.

A ranking can stay right while the vectors crowd into a narrow cone (every cosine close
to 1): symmetric recall hides it, but asymmetric search (queries from a student, the
database from its teacher) breaks, because the student's error is then larger than the
distance between neighbours. Two numbers show it, from a seeded sample of at most
:data:`MAX_SAMPLE_ROWS` rows:

- ``mean_cosine``: the mean cosine over the distinct pairs of sampled rows
  (``i != j``; the mean pairwise cosine). About 0 for a well spread space, 1 when
  every vector coincides.
- ``nn_cosine``: the mean, over the sampled rows, of the cosine to the row's nearest
  neighbour among **all** rows of the set (not only the sample), the row itself
  excluded by its index (an exact duplicate of it at another index does count).

A space whose ``mean_cosine`` exceeds :data:`COLLAPSE_MEAN_COSINE` is *collapsed*.
NumPy only (``raml evaluate`` does not import torch). The cost is one
``[S, D] x [D, N]`` product in blocks of :data:`DEFAULT_BLOCK_ROWS` rows (S = sample
size), in memory bounded by ``S * block_rows`` scores.

>>> import numpy as np
>>> spread = space_spread(np.eye(4, dtype=np.float32))
>>> spread.mean_cosine, spread.nn_cosine, spread.collapsed
(0.0, 0.0, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

COLLAPSE_MEAN_COSINE = 0.9
"""Above this mean pairwise cosine a space counts as collapsed (a narrow cone)."""
MAX_SAMPLE_ROWS = 2000
"""Rows sampled for the spread; all rows when there are no more than this."""
DEFAULT_SEED = 0
"""The seed of the row sample: the same set always gives the same numbers."""
DEFAULT_BLOCK_ROWS = 4096
"""Rows of the whole set scored against the sample at a time (nearest neighbours)."""
SPREAD_SECTION = 'docs/train.md, "Diagnosing a collapsed space"'

Blocks = Iterable[tuple[int, np.ndarray]]
"""``(start, rows)`` pairs covering rows ``0..N-1`` in order: ``rows`` is ``[B, D]``."""


@dataclass(frozen=True)
class SpaceSpread:
    """The spread of one set of unit vectors (definitions: module docstring).

    Attributes:
        mean_cosine: mean cosine over distinct pairs of the sampled rows (NaN for one row).
        nn_cosine: mean over the sampled rows of the cosine to the nearest other row of
            the whole set (NaN for one row).
        rows_sampled: how many rows the sample holds (``min(N, MAX_SAMPLE_ROWS)``).
        num_rows: rows in the whole set (``N``).
    """

    mean_cosine: float
    nn_cosine: float
    rows_sampled: int
    num_rows: int

    @property
    def collapsed(self) -> bool:
        """``mean_cosine > COLLAPSE_MEAN_COSINE``: the vectors lie in a narrow cone."""
        return bool(self.mean_cosine > COLLAPSE_MEAN_COSINE)

    def to_json(self) -> dict[str, float]:
        """``{"mean_cosine": .., "nn_cosine": ..}`` (``raml embed --json``'s ``space``)."""
        return {"mean_cosine": float(self.mean_cosine), "nn_cosine": float(self.nn_cosine)}


def sample_rows(num_rows: int, max_rows: int = MAX_SAMPLE_ROWS,
                seed: int = DEFAULT_SEED) -> np.ndarray:
    """Sorted int64 indices of a seeded sample without replacement of ``min(num_rows,
    max_rows)`` rows out of ``num_rows`` (all of them, in order, when there are few)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}.")
    if num_rows <= max_rows:
        return np.arange(num_rows, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(num_rows, size=max_rows, replace=False)
    return np.sort(chosen).astype(np.int64)


def mean_pairwise_cosine(rows: np.ndarray) -> float:
    """Mean of ``rows[i] . rows[j]`` over the distinct pairs ``i != j`` of unit rows ``[S, D]``.

    Computed as ``(|sum of rows|^2 - sum of |row|^2) / (S (S - 1))`` in float64, without
    the ``[S, S]`` matrix. NaN when ``S < 2``.
    """
    rows = np.asarray(rows, dtype=np.float64)
    count = rows.shape[0]
    if count < 2:
        return float("nan")
    total = rows.sum(axis=0)
    pairs = float(total @ total) - float(np.einsum("ij,ij->", rows, rows))
    return pairs / (count * (count - 1))


def nearest_neighbour_cosines(sample: np.ndarray, sample_index: np.ndarray,
                              blocks: Blocks) -> np.ndarray:
    """For each sampled row, the largest cosine to any other row of the whole set.

    Args:
        sample: float32 ``[S, D]``, the sampled unit rows.
        sample_index: int ``[S]``, sorted: the row number of each sampled row in the set,
            so that the row itself (and only it) is left out of its own search.
        blocks: the whole set as ``(start, rows)`` blocks (:data:`Blocks`).

    Returns:
        float64 ``[S]``; ``-inf`` for a row when the set holds no other row.
    """
    best = np.full(sample.shape[0], -np.inf, dtype=np.float32)
    for start, rows in blocks:
        scores = sample @ np.asarray(rows, dtype=np.float32).T  # [S, B]
        stop = start + scores.shape[1]
        lo, hi = np.searchsorted(sample_index, (start, stop))
        own = np.arange(lo, hi)
        scores[own, sample_index[lo:hi] - start] = -np.inf
        np.maximum(best, scores.max(axis=1), out=best)
    return best.astype(np.float64)


def spread_from_blocks(blocks: Callable[[], Blocks], num_rows: int,
                       max_rows: int = MAX_SAMPLE_ROWS, seed: int = DEFAULT_SEED,
                       neighbours: bool = True) -> SpaceSpread:
    """The spread of a set read block by block (e.g. from a file), in bounded memory.

    Args:
        blocks: called twice, each time returning the whole set as ``(start, rows)``
            blocks (:data:`Blocks`): once to gather the sample, once to search it.
        num_rows: rows in the set (``N``).
        max_rows: the sample's bound.
        seed: the sample's seed.
        neighbours: search the nearest neighbours (the costly part); ``False`` leaves
            ``nn_cosine`` NaN and calls ``blocks`` once.
    """
    if num_rows < 1:
        raise ValueError("The spread of an empty set is undefined.")
    index = sample_rows(num_rows, max_rows, seed)
    parts = []
    for start, rows in blocks():
        lo, hi = np.searchsorted(index, (start, start + len(rows)))
        parts.append(np.asarray(rows, dtype=np.float32)[index[lo:hi] - start])
    sample = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if sample.shape[0] != index.size:
        raise ValueError(f"The blocks held {sample.shape[0]} of the {index.size} sampled rows; "
                         f"they must cover rows 0..{num_rows - 1}.")
    if num_rows < 2 or not neighbours:
        nn = float("nan")
    else:
        nn = float(np.mean(nearest_neighbour_cosines(sample, index, blocks())))
    return SpaceSpread(mean_cosine=mean_pairwise_cosine(sample), nn_cosine=nn,
                       rows_sampled=int(index.size), num_rows=int(num_rows))


def space_spread(vectors: np.ndarray | Any, max_rows: int = MAX_SAMPLE_ROWS,
                 seed: int = DEFAULT_SEED, block_rows: int = DEFAULT_BLOCK_ROWS,
                 neighbours: bool = True) -> SpaceSpread:
    """The spread of unit rows ``[N, D]`` in memory (anything NumPy can read as float32).

    ``neighbours=False`` skips the nearest-neighbour search (``nn_cosine`` is then NaN).

    >>> import numpy as np
    >>> cone = np.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0]], dtype=np.float32)
    >>> cone /= np.linalg.norm(cone, axis=1, keepdims=True)
    >>> space_spread(cone).collapsed
    True
    """
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"Expected an [N, D] matrix, got shape {matrix.shape}.")
    return spread_from_blocks(lambda: _blocks(matrix, block_rows), matrix.shape[0],
                              max_rows, seed, neighbours)


def _blocks(matrix: np.ndarray, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, matrix.shape[0], block_rows):
        yield start, matrix[start:start + block_rows]


def collapse_warning(what: str, spread: SpaceSpread) -> str:
    """The warning for a collapsed space; ``what`` names it (e.g. ``the space of db.h5``)."""
    nearest = ("" if math.isnan(spread.nn_cosine)
               else f" (nearest-neighbour cosine {spread.nn_cosine:.4f})")
    return (f"{what} is collapsed: its mean pairwise cosine is {spread.mean_cosine:.4f} "
            f"(above {COLLAPSE_MEAN_COSINE}), so its vectors lie in a narrow cone"
            f"{nearest}. The ranking may still look "
            "good, but asymmetric search will be fragile: a student's error can exceed the "
            "distance between neighbours. Retrain the teacher so that its space spreads "
            f"out; see {SPREAD_SECTION}.")


__all__ = [
    "COLLAPSE_MEAN_COSINE",
    "MAX_SAMPLE_ROWS",
    "SpaceSpread",
    "collapse_warning",
    "mean_pairwise_cosine",
    "nearest_neighbour_cosines",
    "sample_rows",
    "space_spread",
    "spread_from_blocks",
]
