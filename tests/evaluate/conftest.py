"""A brute-force reference for the evaluation tests: full sort of every row, plain loops."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def reference_ranks(query: np.ndarray, query_labels: np.ndarray, database: np.ndarray,
                    database_labels: np.ndarray, self_index: np.ndarray | None
                    ) -> dict[int, list[int]]:
    """Query row -> 0-based ranks of its positives, by sorting the whole database.

    Scores in float64 (exact for the small dyadic vectors the tests use); order: score
    descending, then database row ascending; the excluded row is dropped first.
    """
    scores = query.astype(np.float64) @ database.astype(np.float64).T
    out = {}
    for i in range(len(query)):
        excluded = -1 if self_index is None else int(self_index[i])
        items = [j for j in range(len(database)) if j != excluded]
        ranking = sorted(items, key=lambda j: (-scores[i, j], j))
        positives = [rank for rank, j in enumerate(ranking)
                     if query_labels[i] >= 0 and database_labels[j] == query_labels[i]]
        if positives:
            out[i] = positives
    return out


def reference_metrics(query: np.ndarray, query_labels: np.ndarray, database: np.ndarray,
                      database_labels: np.ndarray, ks=(1, 2, 4, 8),
                      self_index: np.ndarray | None = None) -> tuple[dict[str, float], int]:
    """Metrics averaged over queries with a positive, and the count of the others."""
    per_query: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    per_query.update({"map": [], "map_trapezoid": [], "map@r": []})
    ranks = reference_ranks(query, query_labels, database, database_labels, self_index)
    for positives in ranks.values():
        count = len(positives)
        for k in ks:
            per_query[f"recall@{k}"].append(1.0 if positives[0] < k else 0.0)
        plain = trapezoid = at_r = 0.0
        for i, rank in enumerate(positives):
            precision = (i + 1) / (rank + 1)
            plain += precision
            before = i / rank if rank > 0 else 1.0
            trapezoid += (before + precision) / 2
            if rank < count:
                at_r += precision
        per_query["map"].append(plain / count)
        per_query["map_trapezoid"].append(trapezoid / count)
        per_query["map@r"].append(at_r / count)
    metrics = {key: sum(values) / len(values) for key, values in per_query.items()}
    return metrics, len(query) - len(ranks)


@pytest.fixture
def brute_force() -> Callable[..., tuple[dict[str, float], int]]:
    return reference_metrics


@pytest.fixture
def brute_force_ranks() -> Callable[..., dict[int, list[int]]]:
    return reference_ranks


def dyadic_vectors(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Vectors with entries in {-1, -0.5, 0, 0.5, 1}: every inner product is exact in float32,
    and repeated values make many exact ties."""
    return (rng.integers(-2, 3, size=(rows, dim)) / 2).astype(np.float32)


@pytest.fixture
def dyadic() -> Callable[[np.random.Generator, int, int], np.ndarray]:
    return dyadic_vectors
