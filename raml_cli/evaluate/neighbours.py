"""Where each query's positives land in its full ranking of the database, in bounded memory.

Every metric raml reports (recall@K, AP, trapezoid AP, MAP@R) is a function of the
0-based ranks of a query's positives in the ranking of the whole database, so this
module computes exactly those ranks and nothing else. It never holds the query x
database score matrix and never sorts a whole row:

1. Queries are processed in blocks of ``block_size`` rows. For each query the inner
   products with its own positives are computed first (a small batched product) and
   give a threshold a hair below the lowest positive score.
2. The database is scanned in chunks of ``chunk_size`` rows: one float32 matrix product
   ``[b, D] x [D, c]`` per chunk (on the CPU, per part of the block's rows), then one
   comparison with the thresholds keeps the *candidates*: the items that score at least as high
   as some positive. Every other item scores below all positives of that query, so it
   ranks below all of them and does not change their ranks.
3. The candidates of the block (typically a few hundred per query) are keyed by
   (query, score descending) and sorted; a positive's rank is the number of its
   query's candidates with a smaller key (a binary search), plus, only where scores
   are equal, the candidates with the same key and a lower database row: the tie
   rule (equal scores are ordered by database row, lower row first).

On the CPU, most candidates of a query lie between its lowest positive and its second
lowest (four in five at SOP size: the hardest positive sits deep). They rank above the
lowest positive and below all the others, so their number is all that matters: the
scan counts those strictly inside a *zone*, from a rounding margin above the lowest
positive's score to one below the second lowest's, and keeps only the others. A positive
at or below the zone's floor then ranks behind every counted item too.

The threshold comes from a separate product, whose rounding may differ from the
chunked product's; it is lowered by a rigorous bound on float32 dot-product error,
and a query whose positives were not all found is recomputed with no threshold, so
the ranks are exact for the scores of the chunked product in every case. (A positive
whose chunked score fell inside its zone is not kept, so it is not found either, and
its query is recomputed the same way.)

Two engines run these steps (``product``): NumPy on the CPU, one thread per core, each
computing score tiles with single-threaded BLAS and scanning each tile while it is in
its cache (:class:`_NumpyEngine`), and torch on any device, all of it on the device
(:mod:`raml_cli.evaluate.torch_ranks`).

Ranking: by inner product of float32 vectors, descending; ties by database row order.
A database row with label ``-1`` is never a positive; a query with label ``-1`` has no
positive. ``self_index[q]`` (``-1``: none) names the database row removed from query
``q``'s ranking (self-exclusion): it is neither ranked nor a positive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from raml_cli.errors import InputError

DEFAULT_BLOCK_SIZE = 1024
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_MAX_CANDIDATES = 1 << 22
#: (query, item) pairs a block of the NumPy engine scores at least, database permitting
#: (see :func:`default_block_size`): 1,024 queries against 65,536 items.
BLOCK_SCORES = 1 << 26
#: The most queries :func:`default_block_size` puts in one block.
MAX_BLOCK_SIZE = 16384
#: The most queries of a block one scan thread scores as one part (one sort of candidates,
#: tiles of at most this many rows); a larger block is cut into more parts than threads.
MAX_PART_ROWS = 1024
DEFAULT_PRODUCT = "numpy"
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Elements of the batched positive-score product (bounds its temporary memory).
_POSITIVE_GATHER_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class ClassIndex:
    """The database rows of each class, for finding a query's positives fast.

    Attributes:
        labels: int64 ``[C]``, the sorted distinct labels ``>= 0`` of the database.
        starts: int64 ``[C]``, where each class begins in ``members``.
        counts: int64 ``[C]``, rows per class.
        members: int64 ``[M]``, database rows grouped by class, ascending within a class.
    """

    labels: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    members: np.ndarray

    @classmethod
    def from_labels(cls, database_labels: np.ndarray) -> ClassIndex:
        """Index ``database_labels`` (int ``[N]``); rows labelled ``-1`` are left out."""
        labels = np.asarray(database_labels, dtype=np.int64)
        known = np.flatnonzero(labels >= 0)
        order = known[np.argsort(labels[known], kind="stable")]
        distinct, starts, counts = np.unique(labels[order], return_index=True,
                                             return_counts=True)
        return cls(distinct.astype(np.int64), starts.astype(np.int64),
                   counts.astype(np.int64), order.astype(np.int64))

    def lookup(self, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, counts)`` int64 ``[Q]`` of each query's class; count 0 if absent or -1."""
        query_labels = np.asarray(query_labels, dtype=np.int64)
        starts = np.zeros(query_labels.shape, dtype=np.int64)
        counts = np.zeros(query_labels.shape, dtype=np.int64)
        if len(self.labels) == 0:
            return starts, counts
        slot = np.minimum(np.searchsorted(self.labels, query_labels), len(self.labels) - 1)
        found = (self.labels[slot] == query_labels) & (query_labels >= 0)
        starts[found] = self.starts[slot[found]]
        counts[found] = self.counts[slot[found]]
        return starts, counts


def count_positives(query_labels: np.ndarray, database_labels: np.ndarray,
                    self_index: np.ndarray, index: ClassIndex | None = None) -> np.ndarray:
    """Positives per query (int64 ``[Q]``): same-label database rows, minus the excluded row."""
    database_labels = np.asarray(database_labels, dtype=np.int64)
    query_labels = np.asarray(query_labels, dtype=np.int64)
    index = index or ClassIndex.from_labels(database_labels)
    _, counts = index.lookup(query_labels)
    has_self = self_index >= 0
    self_label = np.where(has_self, database_labels[np.maximum(self_index, 0)], -1)
    self_is_positive = has_self & (query_labels >= 0) & (self_label == query_labels)
    return counts - self_is_positive.astype(np.int64)


@dataclass(frozen=True)
class PositiveRanks:
    """The ranks of the positives of a block of queries.

    Attributes:
        query_index: int64 ``[Q]``, the query rows covered (ascending); each has >= 1 positive.
        offsets: int64 ``[Q + 1]``; query ``query_index[i]`` has the ranks
            ``ranks[offsets[i]:offsets[i + 1]]``.
        ranks: int64 ``[R]``, 0-based positions in the query's ranking of the database
            (after self-exclusion), ascending within each query.
    """

    query_index: np.ndarray
    offsets: np.ndarray
    ranks: np.ndarray

    @property
    def num_positives(self) -> np.ndarray:
        """int64 ``[Q]``: positives per query."""
        return np.diff(self.offsets)


def positive_ranks(
    query: np.ndarray,
    query_labels: np.ndarray,
    database: np.ndarray,
    database_labels: np.ndarray,
    self_index: np.ndarray | None = None,
    block_size: int | None = None,
    chunk_size: int | None = None,
    max_candidates: int | None = None,
    product: str = DEFAULT_PRODUCT,
    device: str | None = None,
) -> Iterator[PositiveRanks]:
    """Yield the exact positive ranks of every query that has a positive, block by block.

    Args:
        query: float32 ``[M, D]`` query vectors (anything ``np.asarray`` takes).
        query_labels: int ``[M]`` class ids, ``-1`` = unknown (no positive).
        database: float32 ``[N, D]`` database vectors.
        database_labels: int ``[N]`` class ids, ``-1`` = unknown (never a positive).
        self_index: int ``[M]``, the database row left out of each query's ranking, ``-1``
            for none; ``None`` = nothing excluded.
        block_size: queries per block; ``None`` = :func:`default_block_size` (1,024, more
            on a CPU with over 4 cores, which splits each block into one part per core,
            and more against a database of under 65,536 rows).
        chunk_size: database rows per score product; ``None`` = :func:`default_chunk_size`.
        max_candidates: candidates held at once per block; a block that would exceed it
            (embeddings that rank positives very low) is split, so memory stays bounded.
            ``None`` = 4,096 per query, for at most ``default_block_size(product)``
            queries (64 MiB of keys and rows for 1,024): a larger block over a small
            database may hold no more.
        product: the library that computes the scores and ranks them (see
            :data:`SCORE_PRODUCTS`): ``numpy`` (NumPy's BLAS, one thread per core, each
            computing and scanning its own score tiles with single-threaded BLAS) or
            ``torch`` (score blocks, candidates, keys, sort and ranks all in torch on
            ``device``).
        device: the torch device of ``product="torch"`` (``cpu``, ``cuda``, ``cuda:N``);
            ``None`` = cpu. The NumPy product runs on the CPU only.

    Yields:
        :class:`PositiveRanks`, blocks in ascending query order; queries without a
        positive are skipped.
    """
    if block_size is None:
        block_size = default_block_size(product, np.shape(database)[0])
    if max_candidates is None:
        max_candidates = (DEFAULT_MAX_CANDIDATES *
                          min(block_size, default_block_size(product)) // DEFAULT_BLOCK_SIZE)
    if chunk_size is None:
        chunk_size = default_chunk_size(np.shape(database)[0], product)
    if block_size < 1 or chunk_size < 1:
        raise InputError("block_size and chunk_size must be positive integers.")
    if product not in SCORE_PRODUCTS:
        raise InputError(f"Unknown score product {product!r}; choose one of "
                         f"{', '.join(SCORE_PRODUCTS)}.")
    if product == "numpy" and device is not None and str(device) != "cpu":
        raise InputError(f"The numpy score product runs on the CPU, not on {device!r}; use "
                         "product='torch' for a torch device.")
    query = np.ascontiguousarray(query, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    num_queries, num_database = query.shape[0], database.shape[0]
    query_labels = np.asarray(query_labels, dtype=np.int64)
    database_labels = np.asarray(database_labels, dtype=np.int64)
    if self_index is None:
        self_index = np.full(num_queries, -1, dtype=np.int64)
    self_index = np.asarray(self_index, dtype=np.int64)
    index = ClassIndex.from_labels(database_labels)
    expected = count_positives(query_labels, database_labels, self_index, index)
    pending = np.flatnonzero(expected > 0)
    chunk = balanced_part_size(num_database, chunk_size)
    context = _Context(query, query_labels, database, database_labels, self_index, index,
                       chunk, max(int(max_candidates), num_database))
    context.engine = SCORE_PRODUCTS[product](context, device or "cpu")
    try:
        yield from _blocks(context, pending, expected, block_size)
    finally:
        context.engine.close()


def _blocks(ctx: _Context, pending: np.ndarray, expected: np.ndarray, block_size: int
            ) -> Iterator[PositiveRanks]:
    """The blocks of :func:`positive_ranks`, in ascending query order."""
    start, size = 0, balanced_part_size(len(pending), block_size)
    while start < len(pending):
        rows = pending[start:start + size]
        block = _rank_block(ctx, rows, expected[rows])
        if block is None:  # too many candidates: halve the block, here and from now on
            size = max(1, len(rows) // 2)
            continue
        yield block
        start += len(rows)


def default_block_size(product: str = DEFAULT_PRODUCT, num_database: int | None = None
                       ) -> int:
    """Queries per block: :data:`DEFAULT_BLOCK_SIZE`, and for the NumPy engine at least 256
    per scan thread, so that each thread's score tiles stay large enough for BLAS to run
    at full speed (a thread reads the whole database once per block). Against a small
    database (``num_database`` rows) the NumPy engine takes more queries per block, up to
    :data:`MAX_BLOCK_SIZE`, so that a block scores at least :data:`BLOCK_SCORES` pairs:
    the fixed costs of a block (handing out its tiles, the wait for its last tile, the
    sort of its candidates) then stay near 1% of its product. (At 6,050 x 6,050 the
    whole problem is one block: 1.39-1.47x the bare product instead of 1.56-1.61x in
    six, on a 2-core CPU.)"""
    if product != "numpy":
        return DEFAULT_BLOCK_SIZE
    block = max(DEFAULT_BLOCK_SIZE, 256 * scan_threads())
    if num_database:
        block = max(block, min(MAX_BLOCK_SIZE, BLOCK_SCORES // num_database))
    return block


def default_chunk_size(num_database: int, product: str = DEFAULT_PRODUCT) -> int:
    """Database rows per score product: :data:`DEFAULT_CHUNK_SIZE` (4,096), and for the
    NumPy engine on a smaller database as few as 512, so that a block still has a dozen
    tiles per thread to share out (with two or three, a thread slowed for a moment
    leaves the other idle at the end of the block)."""
    if product != "numpy":
        return DEFAULT_CHUNK_SIZE
    return int(min(DEFAULT_CHUNK_SIZE, max(512, -(-num_database // 12))))


def balanced_part_size(total: int, most: int) -> int:
    """The part size that splits ``total`` into as few parts of at most ``most`` as
    possible, all of nearly equal size (no small last part, which BLAS runs slowly)."""
    parts = max(1, -(-total // most))
    return max(1, -(-total // parts))


@dataclass
class _Context:
    query_np: np.ndarray
    query_labels: np.ndarray
    database_np: np.ndarray
    database_labels: np.ndarray
    self_index: np.ndarray
    index: ClassIndex
    chunk_size: int
    max_candidates: int
    engine: RankEngine | None = None

    def __post_init__(self) -> None:
        squares = np.einsum("nd,nd->n", self.database_np, self.database_np)
        self.max_database_norm = float(np.sqrt(squares.max())) if len(squares) else 0.0


class RankEngine(Protocol):
    """Where a block's thresholds, candidates and positive ranks are computed."""

    def thresholds(self, rows: np.ndarray, queries: np.ndarray) -> Any:
        """What :meth:`ranks` scans the block with: float32 ``[b]``, a value at or below
        every positive score of each query (or an engine's own richer bounds)."""

    def ranks(self, rows: np.ndarray, queries: np.ndarray, thresholds: Any,
              limit: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """``(block_row, rank)`` int64 of every positive found, sorted by block row then
        rank; ``None`` if ``limit`` and the candidates overflow. ``thresholds`` comes from
        :meth:`thresholds`, or is a float32 ``[b]`` array (every item at or above it a
        candidate, as for the queries ranked again without a threshold)."""

    def close(self) -> None:
        """Release threads and device memory."""


def _rank_block(ctx: _Context, rows: np.ndarray, expected: np.ndarray) -> PositiveRanks | None:
    """Exact positive ranks of the queries ``rows``; ``None`` if the candidates overflow."""
    engine = ctx.engine
    queries = ctx.query_np[rows]
    found = engine.ranks(rows, queries, engine.thresholds(rows, queries), True)
    if found is None:
        return None
    pos_rows, ranks = found
    missed = np.flatnonzero(np.bincount(pos_rows, minlength=len(rows)) != expected)
    if missed.size:
        # A positive fell below its threshold (rounding beyond the bound): redo those
        # queries with no threshold, so that every item is a candidate.
        again_rows, again_ranks = _unthresholded_ranks(ctx, rows, queries, missed)
        if not np.array_equal(np.bincount(again_rows, minlength=len(rows))[missed],
                              expected[missed]):
            raise InputError("Some inner products are not finite (vectors too large?), so "
                             "the ranking is undefined. Use L2-normalised embeddings.")
        keep = ~np.isin(pos_rows, missed)
        pos_rows = np.concatenate([pos_rows[keep], again_rows])
        ranks = np.concatenate([ranks[keep], again_ranks])
        order = np.lexsort((ranks, pos_rows))
        pos_rows, ranks = pos_rows[order], ranks[order]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(expected, out=offsets[1:])
    return PositiveRanks(rows.astype(np.int64), offsets, ranks.astype(np.int64))


def _unthresholded_ranks(ctx: _Context, rows: np.ndarray, queries: np.ndarray,
                         missed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive ranks of the block rows ``missed`` with every item a candidate."""
    step = max(1, ctx.max_candidates // max(1, ctx.database_np.shape[0]))
    found_rows, found_ranks = [], []
    for first in range(0, missed.size, step):
        part = missed[first:first + step]
        # The lowest finite float32: every item but the excluded one (-inf) is a candidate.
        no_threshold = np.full(part.size, np.finfo(np.float32).min, dtype=np.float32)
        result = ctx.engine.ranks(rows[part], queries[part], no_threshold, False)
        assert result is not None
        found_rows.append(part[result[0]])
        found_ranks.append(result[1])
    return np.concatenate(found_rows), np.concatenate(found_ranks)


class _NumpyEngine:
    """Thresholds, candidates and ranks with NumPy on the CPU (see :class:`RankEngine`).

    A block's query rows are split into one part per core (more where a part would
    exceed :data:`MAX_PART_ROWS` rows). The score tiles (a part's
    rows against ``chunk_size`` database rows) are handed out to one thread per core
    (NumPy releases the GIL), each running BLAS single-threaded, in database order,
    whichever thread is free taking the next one (a core slowed by other work takes
    fewer). A thread scans each tile it computes straight away, while the tile is still
    in that core's caches: the excluded rows set to ``-inf``, the comparison with the
    thresholds, extracting the candidates, counting those in the zone between the two
    lowest positive scores and keying the others. At the end of the block each part
    sorts its candidates and ranks its positives, in parallel too. The parts are
    independent: a query's candidates all fall in its own part. Scanning a tile while
    it is hot costs about half as much as scanning a block that a product over all
    cores has written out through every cache.
    """

    def __init__(self, ctx: _Context, device: str) -> None:
        self._ctx = ctx
        self._threads = scan_threads()
        self._workers = (ThreadPoolExecutor(self._threads - 1, thread_name_prefix="raml-scan")
                         if self._threads > 1 else None)
        self._blas = _single_threaded_blas() if self._threads > 1 else contextlib.nullcontext
        # Each thread's score tile and mask, by (thread, rows, width), reused.
        self._tiles: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def thresholds(self, rows: np.ndarray, queries: np.ndarray) -> _Bounds:
        spans = self._spans(len(rows))
        found = self._each(spans, _lowest_positive_scores, self._ctx, rows, queries,
                           _POSITIVE_GATHER_ELEMENTS // len(spans))
        lowest = np.concatenate([low for low, _ in found])
        second = np.concatenate([next_low for _, next_low in found])
        margin = rounding_margin(self._ctx, queries)
        return _Bounds(_lowered(lowest, margin),
                       ((lowest.astype(np.float64) + margin).astype(np.float32),
                        (second.astype(np.float64) - margin).astype(np.float32)))

    def ranks(self, rows: np.ndarray, queries: np.ndarray, thresholds: np.ndarray | _Bounds,
              limit: bool) -> tuple[np.ndarray, np.ndarray] | None:
        ctx = self._ctx
        if not isinstance(thresholds, _Bounds):  # a bare threshold: no counted zone
            thresholds = _Bounds(thresholds, None)
        parts = [_ScanPart(ctx, rows, queries, thresholds, lo, hi)
                 for lo, hi in self._spans(len(rows))]
        tiles = [(part, first, width) for first, width in _tile_columns(
                     ctx.database_np.shape[0], ctx.chunk_size, TAIL_SPLIT)
                 for part in parts]
        search = _TileQueue(tiles, self._tiles,
                            ctx.max_candidates if limit and len(rows) > 1 else None)
        with self._blas():
            self._each([search] * min(self._threads, len(tiles)), _TileQueue.work)
        if search.overflow:
            return None
        found = self._each(parts, _ScanPart.rank)
        return (np.concatenate([pos_rows for pos_rows, _ in found]),
                np.concatenate([ranks for _, ranks in found]))

    def close(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True, cancel_futures=True)

    def _spans(self, rows: int) -> list[tuple[int, int]]:
        """``[lo, hi)`` ranges of block rows of nearly equal sizes: one per thread, or more
        where a part would exceed :data:`MAX_PART_ROWS` rows."""
        parts = max(self._threads, -(-rows // MAX_PART_ROWS))
        bounds = np.linspace(0, rows, min(parts, rows) + 1).astype(int).tolist()
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def _each(self, parts: list[Any], work: Callable[..., Any], *args: Any) -> list[Any]:
        """``[work(part, *args) for part in parts]``, shared out: this thread and the
        workers each take the next part not yet taken until none is left. Every part has
        finished when this returns or raises."""
        if self._workers is None or len(parts) == 1:
            return [work(part, *args) for part in parts]
        results: list[Any] = [None] * len(parts)
        numbers = itertools.count()  # next() on it is atomic under the GIL

        def share() -> None:
            for number in iter(lambda: next(numbers), None):
                if number >= len(parts):
                    return
                results[number] = work(parts[number], *args)

        futures = [self._workers.submit(share)
                   for _ in range(min(self._threads, len(parts)) - 1)]
        try:
            share()
        finally:
            wait(futures)
        for future in futures:
            future.result()  # raises a worker's exception
        return results


class _TileQueue:
    """The score tiles of a block, ``(part, first database row)``, taken in order by
    every thread that calls :meth:`work`, until none is left, the candidates overflow
    ``budget``, or a thread fails."""

    def __init__(self, tiles: list[tuple[_ScanPart, int]],
                 buffers: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]],
                 budget: int | None) -> None:
        self._tiles, self._buffers, self._budget = tiles, buffers, budget
        self._next = itertools.count()  # next() on it is atomic under the GIL
        self._lock = threading.Lock()
        self._held = 0
        self.overflow = False
        self._stop = False

    def work(self) -> None:
        try:
            while not self._stop:
                number = next(self._next)
                if number >= len(self._tiles):
                    return
                part, first, width = self._tiles[number]
                found = part.search(first, width, self._buffer)
                if self._budget is not None:
                    with self._lock:
                        self._held += found
                        if self._held > self._budget:
                            self.overflow = self._stop = True
        except BaseException:
            self._stop = True  # the other threads stop at their next tile
            raise

    def _buffer(self, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's score tile and mask of ``rows x width`` (made once, reused)."""
        key = (threading.get_ident(), rows, width)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = (np.empty((rows, width), dtype=np.float32),
                                           np.empty((rows, width), dtype=bool))
        return buffer


#: Into how many tiles the last chunk of a block is cut, each at least MIN_TAIL_WIDTH rows.
TAIL_SPLIT = 4
MIN_TAIL_WIDTH = 1000


def _tile_columns(rows: int, chunk: int, tail_split: int) -> list[tuple[int, int]]:
    """``(first, width)`` of the database columns of a block's tiles, in order: chunks of
    ``chunk`` rows, the last one cut into up to ``tail_split`` narrower ones of at least
    :data:`MIN_TAIL_WIDTH` rows, so that the threads finish a block within a fraction of a
    tile of each other (at SOP size the threads then wait 1-2% less; on a small database,
    whose chunks are narrow already, narrower tiles only add overhead)."""
    spans = [(first, min(chunk, rows - first)) for first in range(0, rows, chunk)]
    if not spans:
        return spans
    first, width = spans.pop()
    pieces = max(1, min(tail_split, width // MIN_TAIL_WIDTH))
    step = -(-width // pieces)
    spans += [(start, min(step, first + width - start))
              for start in range(first, first + width, step)]
    return spans


def _single_threaded_blas() -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A context manager factory that runs BLAS single-threaded inside it (each thread of
    the scan computes its own tiles, so BLAS threads of its own would only compete for
    the cores). The limit is process-wide while it holds: BLAS called from other threads
    of the process meanwhile runs single-threaded too."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:  # finding the loaded BLAS libraries takes a few ms
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a dependency; without it the ranks are the same, only slower
            return contextlib.nullcontext
        _BLAS_CONTROLLER = ThreadpoolController()
    controller = _BLAS_CONTROLLER
    return lambda: controller.limit(limits=1, user_api="blas")


_BLAS_CONTROLLER: Any = None


def _lowest_positive_scores(span: tuple[int, int], ctx: _Context, rows: np.ndarray,
                            queries: np.ndarray, elements: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(lowest, second lowest)``: the two lowest positive scores of each query of
    the block rows ``span`` (``inf`` for the second of a query with one positive), from
    the (query, positive) pairs, gathering at most ``elements`` floats of each side at
    once. (Padding every query to the largest class, as :func:`positive_items` does for
    the torch engine, does 2-3x the work on SOP-like classes of 2-12 images.)"""
    rows, queries = rows[span[0]:span[1]], queries[span[0]:span[1]]
    starts, counts = ctx.index.lookup(ctx.query_labels[rows])
    # Every query here has a positive, so at least one pair: reduceat's segments are
    # never empty.
    first_pair = np.cumsum(counts) - counts
    query_of = np.repeat(np.arange(len(rows)), counts)
    items = ctx.index.members[np.repeat(starts - first_pair, counts) +
                              np.arange(int(counts.sum()))]
    scores = np.empty(items.size, dtype=np.float32)
    step = max(1, elements // max(1, queries.shape[1]))
    for first in range(0, items.size, step):
        part = slice(first, first + step)
        np.einsum("nd,nd->n", ctx.database_np[items[part]], queries[query_of[part]],
                  out=scores[part])
    scores[items == ctx.self_index[rows][query_of]] = np.inf  # the excluded row
    ordered = scores[np.lexsort((scores, query_of))]  # by query, then score
    second = np.full(len(rows), np.inf, dtype=np.float32)
    pairs = counts > 1
    second[pairs] = ordered[first_pair[pairs] + 1]
    return ordered[first_pair], second


class _ScanPart:
    """The candidates of the block rows ``[lo, hi)``, gathered tile by tile (the tiles may
    be computed by any thread, in any order), then sorted and ranked."""

    def __init__(self, ctx: _Context, rows: np.ndarray, queries: np.ndarray,
                 bounds: _Bounds, lo: int, hi: int) -> None:
        self._ctx, self._lo, self._hi = ctx, lo, hi
        self._queries = queries[lo:hi]
        self._column = bounds.threshold[lo:hi, None]
        self._zone = (None if bounds.zone is None else
                      (bounds.zone[0][lo:hi], bounds.zone[1][lo:hi]))
        self_rows = ctx.self_index[rows[lo:hi]]
        self._has_self = np.flatnonzero(self_rows >= 0)
        self._self_rows = self_rows
        self._labels = ctx.query_labels[rows[lo:hi]]
        # Per tile: (keys, database rows) of the kept candidates, of the positives among
        # them, whether each positive is below its row's zone, and the zone's count per row.
        self._found: list[tuple[np.ndarray, ...]] = []

    def search(self, first: int, width: int,
               buffer: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> int:
        """Score this part's queries against the ``width`` database rows from ``first``,
        in a tile from ``buffer(rows, width)``, and scan it; returns the number of
        candidates found."""
        chunk = self._ctx.database_np[first:first + width]
        scores, mask = buffer(self._hi - self._lo, chunk.shape[0])
        np.matmul(self._queries, chunk.T, out=scores)
        return self.scan(first, scores, mask)

    def scan(self, first: int, scores: np.ndarray, mask: np.ndarray) -> int:
        """Keep the candidates of this part's score tile ``scores`` (its rows against the
        chunk starting at database row ``first``), counting those in their row's zone;
        returns how many are kept. The excluded rows are set to ``-inf`` there first, so
        they are never candidates."""
        width = scores.shape[1]
        has_self, self_rows = self._has_self, self._self_rows
        inside = has_self[(self_rows[has_self] >= first) & (self_rows[has_self] < first + width)]
        scores[inside, self_rows[inside] - first] = -np.inf
        flat = np.flatnonzero(np.greater_equal(scores, self._column, out=mask))
        hit_rows = flat // width
        values = scores.ravel()[flat]
        counted = None
        if self._zone is not None:
            zone_low, zone_high = self._zone
            in_zone = values > zone_low[hit_rows]
            in_zone &= values < zone_high[hit_rows]
            counted = np.bincount(hit_rows[in_zone], minlength=self._hi - self._lo)
            kept = np.flatnonzero(~in_zone)
            flat, hit_rows, values = flat[kept], hit_rows[kept], values[kept]
        cols = flat - hit_rows * width + first
        positive = np.flatnonzero(self._ctx.database_labels[cols] == self._labels[hit_rows])
        below = (values[positive] <= self._zone[0][hit_rows[positive]]
                 if self._zone is not None else np.zeros(positive.size, dtype=bool))
        keys = _row_score_key(hit_rows + self._lo, values)
        # list.append is atomic under the GIL
        self._found.append((keys, cols, keys[positive], cols[positive], below, counted))
        return flat.size

    def rank(self) -> tuple[np.ndarray, np.ndarray]:
        """``(block_row, rank)`` of the positives found (see :func:`_rank_positives`),
        each positive below its row's zone ranked after every item counted in it."""
        found, self._found = self._found, []
        keys = np.concatenate([f[0] for f in found])
        pos_keys = np.concatenate([f[2] for f in found])
        pos_cols = np.concatenate([f[3] for f in found])
        below = np.concatenate([f[4] for f in found])
        counts = [f[5] for f in found if f[5] is not None]
        behind = None
        if counts and below.any():
            # Every item of a zone scores above every positive below it: one more rank each.
            pos_rows = (pos_keys >> np.uint64(32)).astype(np.intp) - self._lo
            behind = np.where(below, np.sum(counts, axis=0)[pos_rows], 0)
        return _rank_positives(keys, lambda: np.concatenate([f[1] for f in found]),
                               pos_keys, pos_cols, behind)


def scan_threads() -> int:
    """Threads of the NumPy engine: the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


def _torch_engine(ctx: _Context, device: str) -> RankEngine:
    from raml_cli.evaluate.torch_ranks import TorchEngine

    return TorchEngine(ctx, device, positive_items, below_by_rounding_bound)


SCORE_PRODUCTS: dict[str, Callable[[_Context, str], RankEngine]] = {
    "numpy": _NumpyEngine,
    "torch": _torch_engine,
}
"""The libraries that can compute the float32 score blocks and rank the candidates;
each entry makes a :class:`RankEngine` from the search context and a torch device."""


def positive_items(ctx: _Context, rows: np.ndarray, dim: int,
                   elements: int = _POSITIVE_GATHER_ELEMENTS
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The positives of the queries ``rows`` in column groups: ``(items, valid)``, int64
    and bool ``[b, p]``, database rows (padded; ``valid`` marks real positives, the
    excluded row left out), at most ``elements / D`` of them at once."""
    starts, counts = ctx.index.lookup(ctx.query_labels[rows])
    width = int(counts.max()) if len(counts) else 0
    step = max(1, elements // max(1, len(rows) * dim))
    self_rows = ctx.self_index[rows][:, None]
    last = max(len(ctx.index.members) - 1, 0)
    for first in range(0, width, step):
        offsets = np.arange(first, min(width, first + step))[None, :]
        valid = offsets < counts[:, None]
        items = ctx.index.members[np.minimum(starts[:, None] + offsets, last)]
        valid &= items != self_rows
        yield items, valid


def below_by_rounding_bound(ctx: _Context, queries: np.ndarray, lowest: np.ndarray
                            ) -> np.ndarray:
    """float32 ``[b]``: the lowest positive scores lowered past any rounding difference.

    The positive scores come from a batched product whose float32 rounding may differ
    from the chunked product's by at most ``2 * D * u * |q| * max|d|`` (u: unit
    roundoff; any summation order, with or without fused multiply-adds), so the minimum
    is lowered by a little more.
    """
    return _lowered(lowest, rounding_margin(ctx, queries))


def rounding_margin(ctx: _Context, queries: np.ndarray) -> np.ndarray:
    """float64 ``[b]``: 1.5 times the most by which two float32 products of a query with a
    database row may differ, ``2 * D * u * |q| * max|d|`` (see :func:`below_by_rounding_bound`)."""
    dim = queries.shape[1]
    norms = np.sqrt(np.einsum("bd,bd->b", queries, queries))
    return (2.0 * dim * _FLOAT32_UNIT_ROUNDOFF * 1.5) * norms * ctx.max_database_norm


def _lowered(lowest: np.ndarray, margin: np.ndarray) -> np.ndarray:
    return (lowest.astype(np.float64) - margin - 1e-30).astype(np.float32)


@dataclass(frozen=True)
class _Bounds:
    """What a block's scan keeps, per query (float32 ``[b]`` arrays): the candidates score
    at least ``threshold``; of them, those strictly between the two bounds of ``zone``,
    ``(low, high)``, are only counted (``None``: no such zone)."""

    threshold: np.ndarray
    zone: tuple[np.ndarray, np.ndarray] | None


def _rank_positives(keys: np.ndarray, all_cols: Callable[[], np.ndarray],
                    pos_keys: np.ndarray, pos_cols: np.ndarray,
                    behind: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rank the positives of a part's queries among their candidates.

    ``keys``: the (query, score descending) keys of all candidates; ``pos_keys`` /
    ``pos_cols``: the keys and database rows of the positives among them (picked out
    during the scan); ``all_cols()``: the candidates' database rows, needed only to break
    ties; ``behind``: per positive, the items above it that were counted, not kept.

    A positive's rank is the number of candidates of its query that come before it:
    a higher score, or an equal score and a lower database row. The keys are sorted once;
    each positive's count of strictly better candidates is a binary search in them. Only
    positives whose key is shared with another candidate (equal scores, rare outside
    duplicate images) need the database rows to break the tie.

    Returns ``(block_row, rank)`` int64 arrays, one entry per positive found, sorted by
    block row then rank.
    """
    pos_rows = (pos_keys >> np.uint64(32)).astype(np.intp)
    sorted_keys = np.sort(keys)
    row_start = np.searchsorted(sorted_keys, pos_rows.astype(np.uint64) << np.uint64(32))
    better = np.searchsorted(sorted_keys, pos_keys, side="left")
    tied = np.searchsorted(sorted_keys, pos_keys, side="right") - better > 1
    ranks = better - row_start
    if behind is not None:
        ranks += behind
    if tied.any():
        ranks[tied] += _earlier_rows_with_equal_key(keys, all_cols(), pos_keys[tied],
                                                    pos_cols[tied])
    order = np.lexsort((ranks, pos_rows))
    return pos_rows[order].astype(np.int64), ranks[order].astype(np.int64)


def _earlier_rows_with_equal_key(keys: np.ndarray, cols: np.ndarray, tied_keys: np.ndarray,
                                 tied_cols: np.ndarray) -> np.ndarray:
    """For each tied positive, the candidates with its key and a lower database row."""
    groups = np.unique(tied_keys)
    members = np.flatnonzero(np.isin(keys, groups))
    span = int(cols.max()) + 1
    group_of = np.searchsorted(groups, keys[members]).astype(np.int64)
    ordered = np.sort(group_of * span + cols[members])
    tied_group = np.searchsorted(groups, tied_keys).astype(np.int64)
    position = np.searchsorted(ordered, tied_group * span + tied_cols, side="left")
    group_start = np.searchsorted(ordered, tied_group * span, side="left")
    return position - group_start


def _row_score_key(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """uint64 keys ordering by row ascending, then float32 score descending, exactly.

    A float32's bit pattern read as int32, with the magnitude bits of negative values
    flipped, is monotone in the float's value (``-0.0`` is first made ``+0.0``); its
    complement, offset into [0, 2^32), is the descending part, below the row bits.

    Args:
        rows: int ``[C]`` in ``[0, 2^32)``.
        scores: float32 ``[C]`` (consumed: modified in place).
    """
    scores += np.float32(0.0)
    bits = scores.view(np.int32)
    sign = bits >> 31
    sign &= 0x7FFFFFFF
    bits ^= sign  # monotone int32
    np.invert(bits, out=bits)
    descending = bits.view(np.uint32)
    descending ^= np.uint32(0x80000000)  # 2^31 - 1 - monotone, in [0, 2^32)
    key = rows.astype(np.uint64)
    key <<= np.uint64(32)
    key |= descending
    return key
