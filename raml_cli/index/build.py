"""``raml index``: build a faiss index over an embeddings file, streaming its rows.

Memory holds the index being built, one block of rows, and the sampled rows (training
rows and the quality queries), never the whole ``[N, D]`` matrix of the file: an IVF-PQ
index of a file larger than RAM can be built.

Two passes over the file: the first gathers a seeded sample of rows (to train IVF / PQ,
and 1,000 rows used as quality queries); the second adds every row to the index and,
on the way, finds the quality queries' exact top 10 by inner product. The index's own
quality is then ``self_recall@10``: the mean fraction of each query's exact 10 nearest
rows that the index returns among its 10 (autofaiss's way of scoring an index), measured
at the default search parameters, which are tuned here: the smallest ``nprobe`` /
``efSearch`` that reaches ``TARGET_RECALL`` (or stops improving).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from raml_cli.errors import InputError
from raml_cli.index.choose import DEFAULT_MEMORY, IndexPlan, choose_index, parse_memory
from raml_cli.index.file import IndexInfo, write_index_file
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.store import iter_checked_blocks, read_rows

QUALITY_QUERIES = 1_000
QUALITY_K = 10
TARGET_RECALL = 0.95
BLOCK_ROWS = 8192
_TUNING = {"nprobe": (1, 2, 4, 8, 16, 32, 64, 128, 256),
           "efSearch": (16, 32, 64, 128, 256, 512)}


@dataclass
class IndexBuildResult:
    """What ``raml index --json`` prints (see :meth:`as_dict`)."""

    output: Path
    info: IndexInfo
    plan: IndexPlan
    seconds: float
    self_recall: float
    tuning: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "kind": self.plan.kind,
                "factory": self.plan.factory, "parameters": self.plan.params,
                "search_params": self.info.search_params, "reason": self.plan.reason,
                "rows": self.info.num_rows, "dim": self.info.dim,
                "size_bytes": self.output.stat().st_size,
                "estimated_bytes": self.plan.estimated_bytes,
                "memory_budget_bytes": self.info.build["memory_budget_bytes"],
                "train_rows": self.plan.train_rows, "build_seconds": round(self.seconds, 3),
                "self_recall@10": self.self_recall, "quality_queries":
                    self.info.build["quality_queries"], "tuning": self.tuning,
                "seed": self.info.build["seed"]}


def _sample(rng: np.random.Generator, num: int, size: int) -> np.ndarray:
    return np.sort(rng.choice(num, size=min(size, num), replace=False))


def _gather(path: Path, wanted: list[np.ndarray], dim: int, reporter: Reporter,
            total: int) -> list[np.ndarray]:
    """The rows at each sorted index array of ``wanted``, in one pass over the file."""
    out = [np.empty((len(ids), dim), dtype=np.float32) for ids in wanted]
    with reporter.track("sampling rows", total, "rows") as bar:
        for start, block in iter_checked_blocks(path, BLOCK_ROWS):
            stop = start + len(block)
            for ids, rows in zip(wanted, out, strict=True):
                lo, hi = np.searchsorted(ids, [start, stop])
                rows[lo:hi] = block[ids[lo:hi] - start]
            bar.advance(len(block))
    return out


def _merge_top(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, start: int,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
    all_s = np.concatenate([best_s, scores], axis=1)
    all_i = np.concatenate([best_i, ids], axis=1)
    keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else \
        np.broadcast_to(np.arange(all_s.shape[1]), all_s.shape)
    return np.take_along_axis(all_s, keep, 1), np.take_along_axis(all_i, keep, 1)


def _new_index(plan: IndexPlan, dim: int, seed: int) -> faiss.Index:
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind in ("ivf", "ivfpq"):
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = seed
        if plan.kind == "ivfpq":
            ivf.pq.cp.seed = seed
    return index


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set ``nprobe`` / ``efSearch`` (those the index has) on a faiss index."""
    if params:
        text = ",".join(f"{k}={int(v)}" for k, v in params.items())
        faiss.ParameterSpace().set_index_parameters(index, text)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of ``|found_i & exact_i| / k`` (``-1`` ids never count)."""
    k = exact.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in zip(found, exact,
                                                                          strict=True)]
    return float(np.mean(hits) / k)


def _tune(index: faiss.Index, plan: IndexPlan, queries: np.ndarray, exact: np.ndarray,
          reporter: Reporter) -> tuple[dict[str, int], float, list[dict[str, Any]]]:
    k = exact.shape[1]
    if not plan.search_params:
        _, found = index.search(queries, k)
        return {}, recall_at_k(found, exact), []
    name = next(iter(plan.search_params))
    limit = plan.params.get("nlist", 1 << 30)
    tried: list[dict[str, Any]] = []
    for value in (v for v in _TUNING[name] if v <= limit):
        set_search_params(index, {name: value})
        t0 = time.perf_counter()
        _, found = index.search(queries, k)
        ms = 1000 * (time.perf_counter() - t0) / len(queries)
        tried.append({name: value, "self_recall@10": recall_at_k(found, exact),
                      "ms_per_query": round(ms, 4)})
        reporter.log(f"  {name}={value}: self recall@{k} {tried[-1]['self_recall@10']:.4f}, "
                     f"{ms:.3f} ms/query (batch {len(queries)})")
        if tried[-1]["self_recall@10"] >= TARGET_RECALL or (
                len(tried) > 1 and tried[-1]["self_recall@10"] - tried[-2]["self_recall@10"]
                < 0.002):
            break
    best = tried[-1]
    set_search_params(index, {name: best[name]})
    return {name: best[name]}, best["self_recall@10"], tried


def build_index(database: str | os.PathLike, output: str | os.PathLike, *,
                kind: str = "auto", memory: str | int = DEFAULT_MEMORY, seed: int = 0,
                reporter: Reporter | None = None) -> IndexBuildResult:
    """Build an index file over the embeddings file ``database``.

    Args:
        kind: ``auto`` (rules in :mod:`raml_cli.index.choose`), ``flat``, ``hnsw``, ``ivf``
            or ``ivfpq``.
        memory: the budget for the index in memory: bytes or a size like ``"2GB"``.
        seed: seeds the sampled training rows, the quality queries and the k-means.

    Raises:
        InputError: a bad kind or budget, or an index that cannot fit it.
        FormatError: the embeddings file is not a sound one.
    """
    reporter = reporter or NULL_REPORTER
    started = time.perf_counter()
    budget = parse_memory(memory) if isinstance(memory, str) else int(memory)
    if budget <= 0:
        raise InputError(f"--memory must be positive; got {memory!r}.")
    rows = read_rows(database)
    plan = choose_index(rows.num, rows.dim, budget, kind)
    reporter.log(f"index {rows.source}: {plan.kind} ({plan.factory}) because {plan.reason}")
    rng = np.random.default_rng(seed)
    quality_ids = _sample(rng, rows.num, QUALITY_QUERIES)
    train_ids = _sample(rng, rows.num, plan.train_rows) if plan.train_rows else \
        np.zeros(0, dtype=np.int64)
    queries, train = _gather(rows.source, [quality_ids, train_ids], rows.dim, reporter,
                             rows.num)
    index = _new_index(plan, rows.dim, seed)
    if plan.train_rows:
        reporter.log(f"training on {len(train):,} sampled rows")
        index.train(train)
    del train
    k = min(QUALITY_K, rows.num)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    with reporter.track(f"adding rows ({plan.kind})", rows.num, "rows") as bar:
        for start, block in iter_checked_blocks(rows.source, BLOCK_ROWS):
            index.add(block)
            best_s, best_i = _merge_top(best_s, best_i, queries @ block.T, start, k)
            bar.advance(len(block))
    search_params, self_recall, tuning = _tune(index, plan, queries, best_i, reporter)
    seconds = time.perf_counter() - started
    info = IndexInfo(
        kind=plan.kind, factory=plan.factory, num_rows=rows.num, dim=rows.dim,
        search_params=search_params, database=rows.attrs, source=str(database),
        build={"seconds": round(seconds, 3), "seed": seed, "memory_budget_bytes": budget,
               "estimated_bytes": plan.estimated_bytes, "reason": plan.reason,
               "parameters": plan.params, "train_rows": plan.train_rows,
               "quality_queries": len(queries), "self_recall@10": self_recall,
               "tuning": tuning, "faiss_version": faiss.__version__})
    out = write_index_file(output, index, rows.labels, rows.paths, info)
    info.path, info.size_bytes = out, out.stat().st_size
    return IndexBuildResult(out, info, plan, seconds, self_recall, tuning)
