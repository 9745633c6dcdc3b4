"""Retrieval metrics of one query, computed from the ranks of its positives.

Notation, for one query: the database (minus the excluded self item) is ranked by
inner product, descending, ties by database row (lower row first); ``P >= 1`` is the
number of positives (database items with the query's label); ``r_0 < r_1 < ... <
r_{P-1}`` are their 0-based ranks. All definitions below are exact (no interpolation
other than the stated trapezoid rule); a query with ``P = 0`` has no value and is
left out of every average.

- ``recall@K`` (metric-learning "Recall@K", i.e. hit rate): 1 if ``r_0 < K`` else 0.
- ``map`` (plain, non-interpolated average precision over the full ranking):
  ``AP = (1/P) * sum_i (i + 1) / (r_i + 1)``.
- ``map_trapezoid`` (the trapezoid rule of Radenovic et al.'s ``compute_ap``, which the
  paper's reference code uses for its "mAP"):
  ``AP_trap = (1/P) * sum_i (p0_i + p1_i) / 2`` with ``p0_i = i / r_i`` if ``r_i > 0``
  else ``1``, and ``p1_i = (i + 1) / (r_i + 1)``.
- ``map@r`` (MAP@R of Musgrave et al., ECCV 2020), with ``R = P``:
  ``MAP@R = (1/R) * sum_{i : r_i < R} (i + 1) / (r_i + 1)``.

Each is averaged over the queries that have a positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raml_cli.evaluate.neighbours import PositiveRanks

AP_KEYS = ("map", "map_trapezoid", "map@r")


def recall_key(k: int) -> str:
    """The metric name of recall at ``k`` (``recall@1``)."""
    return f"recall@{k}"


def metric_keys(ks: Sequence[int]) -> list[str]:
    """Every metric name, in report order: ``recall@K`` for each K, then the AP family."""
    return [recall_key(k) for k in ks] + list(AP_KEYS)


def per_query_metrics(block: PositiveRanks, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Each metric of each query of ``block``: float64 ``[Q]`` arrays keyed by metric name.

    Args:
        block: the ranks of the positives of ``Q`` queries (each with ``P >= 1``).
        ks: the cut-offs of ``recall@K``.
    """
    num_positives = block.num_positives
    num_queries = len(num_positives)
    owner = np.repeat(np.arange(num_queries), num_positives)
    ordinal = (np.arange(len(block.ranks)) - block.offsets[owner]).astype(np.float64)
    rank = block.ranks.astype(np.float64)
    precision_at_hit = (ordinal + 1.0) / (rank + 1.0)
    precision_before = np.divide(ordinal, rank, out=np.ones_like(rank), where=rank > 0)
    within_r = rank < num_positives[owner]
    count = num_positives.astype(np.float64)

    def mean_per_query(terms: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=terms, minlength=num_queries) / count

    best = block.ranks[block.offsets[:-1]]
    values = {recall_key(k): (best < k).astype(np.float64) for k in ks}
    values["map"] = mean_per_query(precision_at_hit)
    values["map_trapezoid"] = mean_per_query((precision_before + precision_at_hit) / 2.0)
    values["map@r"] = mean_per_query(np.where(within_r, precision_at_hit, 0.0))
    return values
