"""Evaluate query embeddings against database embeddings: the engine of ``raml evaluate``.

:func:`evaluate_arrays` works on plain arrays; :func:`evaluate_sets` on embeddings
files read by :mod:`raml_cli.store` (it decides self-exclusion from the paths and
returns the :class:`EvaluationResult` whose :meth:`~EvaluationResult.to_json` is the
JSON object of ``raml evaluate --json``). Metric definitions:
:mod:`raml_cli.evaluate.metrics` and docs/evaluate.md.

>>> import numpy as np
>>> vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
>>> labels = np.array([0, 0, 1, 1])
>>> evaluate_arrays(vectors, labels, vectors, labels, ks=(1,), exclude_self=True)["recall@1"]
1.0
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raml_cli.errors import DataError, InputError
from raml_cli.evaluate.metrics import metric_keys, per_query_metrics
from raml_cli.evaluate.neighbours import (
    DEFAULT_PRODUCT,
    ClassIndex,
    count_positives,
    positive_ranks,
)
from raml_cli.evaluate.space import SpaceSpread, space_spread
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.store import EmbeddingSet

DEFAULT_KS = (1, 2, 4, 8)


@dataclass
class EvaluationResult:
    """The outcome of one evaluation.

    Attributes:
        metrics: metric name -> fraction in [0, 1] (``recall@K`` per K, ``map``,
            ``map_trapezoid``, ``map@r``), each averaged over the queries with a positive.
        num_queries: query rows (all of them, with or without a positive).
        num_database: database rows.
        queries_without_positive: queries left out of every average (no same-label item
            in the database after self-exclusion, or label ``-1``).
        self_excluded: whether each query's own item was removed from its ranking.
        query: the root attributes of the query file.
        database: the root attributes of the database file.
        query_space, database_space: the spread of each side (:mod:`raml_cli.evaluate.space`;
            the same object for symmetric evaluation), ``None`` if not measured.
    """

    metrics: dict[str, float]
    num_queries: int
    num_database: int
    queries_without_positive: int
    self_excluded: bool
    query: dict[str, Any] = field(default_factory=dict)
    database: dict[str, Any] = field(default_factory=dict)
    query_space: SpaceSpread | None = None
    database_space: SpaceSpread | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``raml evaluate --json`` (DESIGN.md), as plain Python values."""
        out = {
            "metrics": {key: float(value) for key, value in self.metrics.items()},
            "num_queries": int(self.num_queries),
            "num_database": int(self.num_database),
            "queries_without_positive": int(self.queries_without_positive),
            "self_excluded": bool(self.self_excluded),
            "query": dict(self.query),
            "database": dict(self.database),
        }
        if self.query_space is not None and self.database_space is not None:
            out["space"] = {"query_mean_cosine": float(self.query_space.mean_cosine),
                            "database_mean_cosine": float(self.database_space.mean_cosine),
                            "database_nn_cosine": float(self.database_space.nn_cosine)}
        return out


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate recall cut-offs: a non-empty set of integers >= 1, returned sorted, unique."""
    values = list(ks)
    bad = [k for k in values
           if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if not values or bad:
        raise InputError(f"Recall cut-offs must be integers >= 1 (e.g. 1,2,4,8); got "
                         f"{values!r}.")
    return tuple(sorted({int(k) for k in values}))


def evaluate_arrays(
    query: np.ndarray | Any,
    query_labels: np.ndarray | Sequence[int],
    database: np.ndarray | Any,
    database_labels: np.ndarray | Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    exclude_self: bool = False,
    block_size: int | None = None,
    chunk_size: int | None = None,
    product: str = DEFAULT_PRODUCT,
    device: str | None = None,
) -> dict[str, float]:
    """Retrieval metrics of ``query`` rows searched in ``database`` rows by inner product.

    Args:
        query: ``[M, D]`` query vectors: a NumPy array or a torch tensor (used as
            float32; unit rows expected).
        query_labels: int ``[M]`` class ids, ``-1`` = unknown (such a query has no positive).
        database: ``[N, D]`` database vectors.
        database_labels: int ``[N]`` class ids, ``-1`` = unknown (never a positive).
        ks: recall cut-offs.
        exclude_self: remove database row ``i`` from query ``i``'s ranking (needs ``M == N``;
            for the same images in another order use :func:`evaluate_sets`).
        block_size: queries per block (memory ~ ``block_size * chunk_size`` scores);
            ``None`` = the engine's choice (1,024 on up to 4 cores).
        chunk_size: database rows per score product; ``None`` = the engine's choice.
        product: the library that computes and ranks the scores, ``numpy`` (default) or
            ``torch`` (all of it on ``device``; see :func:`score_engine`).
        device: the torch device of ``product="torch"`` (``cpu``, ``cuda``, ``cuda:N``).

    Returns:
        metric name -> fraction in [0, 1], averaged over the queries with a positive.
    """
    query_m, database_m = _as_matrix(query, "query"), _as_matrix(database, "database")
    q_labels = _as_labels(query_labels, query_m.shape[0], "query")
    db_labels = _as_labels(database_labels, database_m.shape[0], "database")
    if query_m.shape[1] != database_m.shape[1]:
        raise InputError(f"Query vectors are {query_m.shape[1]}-d but database vectors are "
                         f"{database_m.shape[1]}-d; both sides must come from compatible "
                         "models with the same embedding size.")
    if exclude_self and query_m.shape[0] != database_m.shape[0]:
        raise InputError(f"exclude_self pairs query row i with database row i, but there are "
                         f"{query_m.shape[0]} queries and {database_m.shape[0]} database rows.")
    self_index = np.arange(query_m.shape[0], dtype=np.int64) if exclude_self else None
    metrics, _ = _evaluate(query_m, q_labels, database_m, db_labels, check_ks(ks), self_index,
                           block_size, chunk_size, product, device, NULL_REPORTER)
    return metrics


def evaluate_sets(
    query: EmbeddingSet,
    database: EmbeddingSet | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_self: bool | None = None,
    reporter: Reporter = NULL_REPORTER,
    block_size: int | None = None,
    chunk_size: int | None = None,
    product: str = DEFAULT_PRODUCT,
    device: str | None = None,
) -> EvaluationResult:
    """Evaluate an embeddings file of queries against one of database items.

    Args:
        query: the query embeddings.
        database: the database embeddings; ``None`` = ``query`` searched against itself
            (symmetric evaluation, self excluded unless ``exclude_self=False``).
        ks: recall cut-offs.
        exclude_self: remove each query's own image from its ranking. ``None`` (default):
            on when both sets hold the same paths in the same order, else off. When on
            for different sets, a query's own image is the first database row with the
            same path (none if its path is absent).
        reporter: progress on stderr.
        block_size: queries per block; ``None`` = the engine's choice.
        chunk_size: database rows per score product; ``None`` = the engine's choice.
        product: the library that computes and ranks the scores, ``numpy`` (default) or
            ``torch`` (all of it on ``device``; :func:`score_engine` picks both).
        device: the torch device of ``product="torch"`` (``cpu``, ``cuda``, ``cuda:N``).
    """
    ks = check_ks(ks)
    same_file = database is None
    database = query if database is None else database
    names = _source_name(query, "query"), _source_name(database, "database")
    if query.dim != database.dim:
        raise InputError(f"{names[0]} holds {query.dim}-d embeddings but {names[1]} holds "
                         f"{database.dim}-d ones. Query and database must come from models "
                         "with the same embedding size (a teacher and its student).")
    for name, labels in zip(names, (query.labels, database.labels), strict=True):
        if not (np.asarray(labels) >= 0).any():
            raise DataError(f"{name} has no labels (every label is -1), so no query has a "
                            "positive. Embed a dataset split with known classes.")
    same_order = same_file or query.paths == database.paths
    if exclude_self is None:
        exclude_self = same_order
    self_index = None
    if exclude_self:
        self_index = (np.arange(query.num, dtype=np.int64) if same_order
                      else _self_index_by_path(query.paths, database.paths))
        if not (self_index >= 0).any():
            raise InputError(f"--exclude-self was asked for, but no query image of {names[0]} "
                             f"is in {names[1]} (no shared paths). Drop --exclude-self.")
    query_m = np.ascontiguousarray(query.embeddings, dtype=np.float32)
    database_m = (query_m if same_file else
                  np.ascontiguousarray(database.embeddings, dtype=np.float32))
    metrics, without = _evaluate(query_m, np.asarray(query.labels, dtype=np.int64), database_m,
                                 np.asarray(database.labels, dtype=np.int64), ks, self_index,
                                 block_size, chunk_size, product, device, reporter)
    # The spread costs one [2000, D] x [D, N] product, a few % of the evaluation at SOP size.
    database_space = space_spread(database_m)
    query_space = (database_space if same_file
                   else space_spread(query_m, neighbours=False))  # its nn is not reported
    return EvaluationResult(metrics, query.num, database.num, without, bool(exclude_self),
                            dict(query.attrs), dict(database.attrs), query_space,
                            database_space)


def _evaluate(query: np.ndarray, query_labels: np.ndarray, database: np.ndarray,
              database_labels: np.ndarray, ks: tuple[int, ...], self_index: np.ndarray | None,
              block_size: int | None, chunk_size: int | None, product: str,
              device: str | None,
              reporter: Reporter) -> tuple[dict[str, float], int]:
    """Metrics averaged over the queries with a positive, and the count of the others."""
    num_queries = query.shape[0]
    if self_index is None:
        self_index = np.full(num_queries, -1, dtype=np.int64)
    index = ClassIndex.from_labels(database_labels)
    with_positive = count_positives(query_labels, database_labels, self_index, index) > 0
    evaluated = int(with_positive.sum())
    if evaluated == 0:
        raise DataError("No query has a positive (an item of its class) in the database, so "
                        "no metric is defined. Check that both files come from the same "
                        "dataset split and carry its labels.")
    keys = metric_keys(ks)
    per_query = {key: np.zeros(num_queries, dtype=np.float64) for key in keys}
    with reporter.track("evaluating", total=evaluated, unit="queries") as bar:
        for block in positive_ranks(query, query_labels, database, database_labels, self_index,
                                    block_size=block_size, chunk_size=chunk_size,
                                    product=product, device=device):
            for key, values in per_query_metrics(block, ks).items():
                per_query[key][block.query_index] = values
            bar.advance(len(block.query_index))
    # One fixed summation order per metric, so the result does not depend on block sizes.
    metrics = {key: math.fsum(per_query[key][with_positive]) / evaluated for key in keys}
    return metrics, num_queries - evaluated


def score_engine(device: str = "auto") -> tuple[str, str | None]:
    """The ``(product, device)`` of the evaluation for a ``--device`` choice.

    ``cpu``: NumPy (the fastest on a CPU). ``cuda`` / ``cuda:N``: torch on that GPU
    (score blocks, candidates and ranks on the device). ``auto``: CUDA when torch sees a
    GPU, else the CPU; where no GPU driver is installed the answer is the CPU without
    loading torch, which would add about a second to the command's start.

    >>> score_engine("cpu")
    ('numpy', None)
    """
    text = (device or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not _gpu_driver_present()):
        return "numpy", None
    from raml_cli.devices import resolve_device

    resolved = resolve_device(device)
    return ("numpy", None) if resolved.type == "cpu" else ("torch", str(resolved))


def _gpu_driver_present() -> bool:
    """False only where no GPU driver can be found (Linux: NVIDIA, ROCm or WSL devices)."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True  # asking torch is then cheap, or the only way to know
    return any(os.path.exists(path) for path in
               ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg"))


def _self_index_by_path(query_paths: Sequence[str], database_paths: Sequence[str]
                        ) -> np.ndarray:
    """For each query path, the first database row with that path, ``-1`` if none."""
    first: dict[str, int] = {}
    for row, path in enumerate(database_paths):
        first.setdefault(path, row)
    return np.array([first.get(path, -1) for path in query_paths], dtype=np.int64)


def _source_name(embeddings: EmbeddingSet, role: str) -> str:
    return str(embeddings.source) if embeddings.source is not None else f"the {role} set"


def _as_matrix(values: Any, role: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    matrix = np.asarray(values)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InputError(f"The {role} vectors must be a non-empty [N, D] matrix; got shape "
                         f"{matrix.shape}.")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise InputError(f"The {role} vectors contain NaN or Inf; rankings are undefined.")
    return matrix


def _as_labels(labels: np.ndarray | Sequence[int], rows: int, role: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (rows,) or (array.size and array.dtype.kind not in "iu"):
        raise InputError(f"The {role} labels must be {rows} integers (one per row); got shape "
                         f"{array.shape} of {array.dtype}.")
    return array.astype(np.int64)
