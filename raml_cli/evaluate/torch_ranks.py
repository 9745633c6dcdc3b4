"""The positive-rank search of :mod:`raml_cli.evaluate.neighbours`, in torch on any device.

The same algorithm as the NumPy engine, step for step: thresholds from a batched
product of each query with its positives, lowered by the rounding bound; score blocks
``queries @ chunk.T`` with ``torch.mm``; the excluded row set to ``-inf``; candidates by
one comparison with the thresholds; keys (block row, score descending) as int64; one
sort per block; ranks by binary search, ties broken by database row. On a GPU all of it
stays on the device; only the positives' block rows and ranks (a few per query) come
back to the host.

The product is real float32: TF32 (10-bit mantissas on NVIDIA tensor cores) is switched
off while this engine computes, and restored afterwards, so the rounding bound of the
thresholds holds (it holds for any float32 summation order, split-K and fused
multiply-adds included). The ranks are exact for the scores the device computes; where
two devices round a score differently, as any two BLAS libraries may, near-equal scores
can swap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from raml_cli.devices import exact_float32

_ROW_SHIFT = 32


class TorchEngine:
    """Thresholds, candidates and ranks in torch on ``device`` (see
    :class:`~raml_cli.evaluate.neighbours.RankEngine`).

    Args:
        ctx: the search context of :mod:`~raml_cli.evaluate.neighbours` (arrays, index,
            chunk size, candidate limit).
        device: the torch device.
        positive_items: ``(ctx, rows, dim) -> iterator of (items, valid)``, the positives
            of a block (:func:`~raml_cli.evaluate.neighbours.positive_items`).
        lowered: ``(ctx, queries, lowest) -> thresholds``, the lowest positive scores
            lowered by the rounding bound
            (:func:`~raml_cli.evaluate.neighbours.below_by_rounding_bound`).
    """

    def __init__(self, ctx: Any, device: str | torch.device,
                 positive_items: Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]],
                 lowered: Callable[..., np.ndarray]) -> None:
        self._ctx = ctx
        self._positive_items, self._lowered = positive_items, lowered
        self._device = torch.device(device)
        self._database = torch.from_numpy(ctx.database_np).to(self._device)
        self._database_labels = torch.from_numpy(ctx.database_labels).to(self._device)
        self._query_labels = torch.from_numpy(ctx.query_labels).to(self._device)

    def _put(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._device)

    def thresholds(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        q = self._put(queries)
        lowest = torch.full((len(rows),), float("inf"), dtype=torch.float32,
                            device=self._device)
        with exact_float32():
            for items, valid in self._positive_items(self._ctx, rows, queries.shape[1]):
                scores = torch.bmm(self._database[self._put(items)], q[:, :, None])[:, :, 0]
                scores = torch.where(self._put(valid), scores, float("inf"))
                lowest = torch.minimum(lowest, scores.amin(dim=1))
        return self._lowered(self._ctx, queries, lowest.cpu().numpy())

    def ranks(self, rows: np.ndarray, queries: np.ndarray, thresholds: np.ndarray,
              limit: bool) -> tuple[np.ndarray, np.ndarray] | None:
        with exact_float32():
            found = self._candidates(rows, queries, thresholds, limit)
        if found is None:
            return None
        pos_rows, ranks = self._rank_candidates(rows, *found)
        pos_rows, ranks = pos_rows.cpu().numpy(), ranks.cpu().numpy()
        order = np.lexsort((ranks, pos_rows))
        return pos_rows[order].astype(np.int64), ranks[order].astype(np.int64)

    def close(self) -> None:
        del self._database, self._database_labels, self._query_labels

    def _candidates(self, rows: np.ndarray, queries: np.ndarray, thresholds: np.ndarray,
                    limit: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(key, database_row)`` int64 tensors of the items scoring at least the threshold."""
        ctx = self._ctx
        q = self._put(queries)
        column = self._put(thresholds)[:, None]
        self_rows = self._put(ctx.self_index[rows])
        keys, cols = [], []
        total = 0
        for first in range(0, ctx.database_np.shape[0], ctx.chunk_size):
            scores = torch.mm(q, self._database[first:first + ctx.chunk_size].T)
            width = scores.shape[1]
            inside = torch.nonzero((self_rows >= first) & (self_rows < first + width))[:, 0]
            scores[inside, self_rows[inside] - first] = float("-inf")
            flat = torch.nonzero((scores >= column).view(-1))[:, 0]
            total += flat.numel()
            if limit and total > ctx.max_candidates and queries.shape[0] > 1:
                return None
            hit_rows = torch.div(flat, width, rounding_mode="floor")
            keys.append(row_score_key(hit_rows, scores.view(-1)[flat]))
            cols.append(flat - hit_rows * width + first)
        return torch.cat(keys), torch.cat(cols)

    def _rank_candidates(self, rows: np.ndarray, keys: torch.Tensor, cols: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block_row, rank)`` of every positive among the candidates (unordered)."""
        block_rows = keys >> _ROW_SHIFT
        positive = (self._database_labels[cols]
                    == self._query_labels[self._put(rows)][block_rows])
        pos_rows, pos_keys, pos_cols = block_rows[positive], keys[positive], cols[positive]
        sorted_keys = torch.sort(keys).values
        row_start = torch.searchsorted(sorted_keys, pos_rows << _ROW_SHIFT)
        better = torch.searchsorted(sorted_keys, pos_keys)
        tied = torch.searchsorted(sorted_keys, pos_keys, right=True) - better > 1
        ranks = better - row_start
        if bool(tied.any()):
            ranks[tied] += _earlier_rows_with_equal_key(keys, cols, pos_keys[tied],
                                                        pos_cols[tied])
        return pos_rows, ranks


def _earlier_rows_with_equal_key(keys: torch.Tensor, cols: torch.Tensor,
                                 tied_keys: torch.Tensor, tied_cols: torch.Tensor
                                 ) -> torch.Tensor:
    """For each tied positive, the candidates with its key and a lower database row."""
    groups = torch.unique(tied_keys)
    members = torch.nonzero(torch.isin(keys, groups))[:, 0]
    span = int(cols.max()) + 1
    group_of = torch.searchsorted(groups, keys[members])
    ordered = torch.sort(group_of * span + cols[members]).values
    tied_group = torch.searchsorted(groups, tied_keys)
    position = torch.searchsorted(ordered, tied_group * span + tied_cols)
    group_start = torch.searchsorted(ordered, tied_group * span)
    return position - group_start


def row_score_key(rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering by row ascending, then float32 score descending, exactly.

    The same order as :func:`raml_cli.evaluate.neighbours._row_score_key`: the float32
    bits read as int32, magnitude bits of negative values flipped (monotone in the
    score; ``-0.0`` first made ``+0.0``), subtracted from ``2^31 - 1`` into
    ``[0, 2^32)`` below the row bits. ``rows`` must be below ``2^31``.
    """
    bits = (scores + 0.0).view(torch.int32).to(torch.int64)
    monotone = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (rows << _ROW_SHIFT) + ((1 << 31) - 1 - monotone)
