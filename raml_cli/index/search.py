"""``raml search``: encode query images with a model (or read query embeddings) and search
an index file.

A query model may search a database only when they share an embedding space: the model
is the one that encoded the database, or a student distilled from it (its
``teacher_sha256`` is the database's ``model_sha256``). Anything else is refused, unless
forced, with a message naming the teacher of each side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raml_cli.data.dataset import Sample
from raml_cli.errors import InputError
from raml_cli.index.build import set_search_params
from raml_cli.index.file import LoadedIndex, read_index_file
from raml_cli.progress import NULL_REPORTER, Reporter


@dataclass
class Hit:
    """One result: ``rank`` (1-based), the database ``row``, its ``path``, ``score``, ``label``."""

    rank: int
    row: int
    path: str
    score: float
    label: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "score": self.score,
                "label": self.label, "row": self.row}


@dataclass
class QueryResult:
    """One query (its ``path`` and ``label``, ``-1`` when unknown) and its ranked hits."""

    path: str
    label: int
    results: list[Hit]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label,
                "results": [hit.as_dict() for hit in self.results]}


@dataclass
class SearchResult:
    """What ``raml search --json`` prints (see :meth:`as_dict`).

    ``encode_ms_per_query`` is decode + encode of one query image (``None`` for
    ``--queries Q.h5``); ``search_ms_per_query`` the index search alone.
    """

    queries: list[QueryResult]
    k: int
    search_params: dict[str, int]
    encode_ms_per_query: float | None
    search_ms_per_query: float
    index: dict[str, Any]
    model: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    query_root: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"queries": [q.as_dict() for q in self.queries], "k": self.k,
                "search_params": self.search_params,
                "encode_ms_per_query": self.encode_ms_per_query,
                "search_ms_per_query": self.search_ms_per_query, "index": self.index,
                "model": self.model, "warnings": self.warnings}


def compatibility_problem(model_sha256: str, teacher_sha256: str, role: str,
                          database: dict[str, Any], model_name: str) -> str | None:
    """Why a model may not search a database (``None`` when it may)."""
    db_sha = str(database.get("model_sha256") or "")
    if not db_sha or model_sha256 == db_sha or (teacher_sha256 and teacher_sha256 == db_sha):
        return None
    ours = (f"was distilled from the teacher {teacher_sha256[:12]}" if teacher_sha256
            else f"is itself a {role or 'model'} ({model_sha256[:12]}) distilled from no one")
    theirs = ", ".join(f"{k} {database[k]}" for k in ("role", "architecture", "resolution")
                       if database.get(k) not in (None, ""))
    return (f"{model_name} {ours}, but the database was encoded by the model {db_sha[:12]}"
            f"{f' ({theirs})' if theirs else ''}: the two live in different embedding "
            "spaces, so the ranking would be meaningless. Search with a student distilled "
            "from that teacher (or the teacher itself), or pass --force to search anyway.")


def _check_model(info: Any, loaded: LoadedIndex, force: bool, reporter: Reporter,
                 warnings: list[str]) -> None:
    if info.embedding_dim != loaded.info.dim:
        raise InputError(f"{info.path} makes {info.embedding_dim}-d embeddings but the index "
                         f"{loaded.info.path} holds {loaded.info.dim}-d rows. Use the model "
                         "the database was encoded with, or a student of it.")
    database = loaded.info.database
    if not database.get("model_sha256"):
        warnings.append("the database records no model, so compatibility was not checked")
    problem = compatibility_problem(info.sha256, info.teacher_sha256, info.role, database,
                                    str(info.path))
    if problem and not force:
        raise InputError(problem)
    if problem:
        warnings.append(f"--force: {problem.split(': the two')[0]}")
    for text in warnings:
        reporter.warn(text)


def search_vectors(loaded: LoadedIndex, vectors: np.ndarray, k: int,
                   params: dict[str, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores and rows ``[Q, k]`` of the nearest database rows, and ms per query."""
    if k < 1:
        raise InputError(f"-k must be at least 1; got {k}.")
    set_search_params(loaded.index, params)
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    scores, rows = loaded.index.search(queries, min(k, loaded.info.num_rows))
    ms = 1000 * (time.perf_counter() - started) / max(1, len(queries))
    return scores, rows, ms


def _params(loaded: LoadedIndex, nprobe: int | None, ef: int | None) -> dict[str, int]:
    params = dict(loaded.info.search_params)
    for name, value, option in (("nprobe", nprobe, "--nprobe"), ("efSearch", ef, "--ef")):
        if value is None:
            continue
        if name not in params:
            raise InputError(f"{option} applies to {'ivf/ivfpq' if name == 'nprobe' else 'hnsw'}"
                             f" indexes; {loaded.info.path} is a {loaded.info.kind} index.")
        if value < 1:
            raise InputError(f"{option} must be at least 1; got {value}.")
        params[name] = int(value)
    return params


def _results(loaded: LoadedIndex, paths: Sequence[str], labels: Sequence[int],
             scores: np.ndarray, rows: np.ndarray) -> list[QueryResult]:
    out = []
    for path, label, s_row, i_row in zip(paths, labels, scores, rows, strict=True):
        hits = [Hit(rank, int(i), loaded.paths[int(i)], float(s), int(loaded.labels[int(i)]))
                for rank, (s, i) in enumerate(((s, i) for s, i in zip(s_row, i_row,
                                                                       strict=True)
                                               if i >= 0), start=1)]
        out.append(QueryResult(str(path), int(label), hits))
    return out


def search_images(model: str | os.PathLike, index_file: str | os.PathLike,
                  samples: Sequence[Sample], root: str | os.PathLike, *, k: int = 10,
                  res: int | None = None, nprobe: int | None = None, ef: int | None = None,
                  device: str = "auto", batch_size: int = 32, force: bool = False,
                  reporter: Reporter | None = None, runtime: str = "auto") -> SearchResult:
    """Encode ``samples`` (relative to ``root``) with ``model`` and search ``index_file``.

    ``model``: a ``.safetensors`` model file or an ``.onnx`` file of ``raml export``;
    ``runtime``: ``auto``, ``torch`` or ``onnxruntime`` (:mod:`raml_cli.index.query`).

    Raises:
        InputError: no images, a model of another size, or a model of another teacher
            (unless ``force``).
    """
    from raml_cli.embed import embed_in_memory
    from raml_cli.index.query import choose_runtime, open_query_model, read_query_model_info

    reporter = reporter or NULL_REPORTER
    if not samples:
        raise InputError("No query images: give image files, --images DIR, or --queries Q.h5.")
    fall_back = str(runtime).strip().lower() == "auto"
    runtime = choose_runtime(model, runtime, device)
    info = read_query_model_info(model)
    loaded = read_index_file(index_file)
    warnings: list[str] = []
    _check_model(info, loaded, force, reporter, warnings)
    params = _params(loaded, nprobe, ef)
    query_model = open_query_model(model, runtime, device, res, fall_back=fall_back,
                                   reporter=reporter, info=info)
    info, resolution, torch_device = query_model.info, query_model.resolution, \
        query_model.device
    warnings.extend(query_model.warnings)
    started = time.perf_counter()
    vectors = embed_in_memory(query_model.encode, samples, root, resolution,
                              batch_size=batch_size, device=torch_device, reporter=reporter,
                              description="encoding queries", mean=query_model.mean,
                              std=query_model.std)
    encode_ms = 1000 * (time.perf_counter() - started) / len(samples)
    scores, rows, search_ms = search_vectors(loaded, vectors, k, params)
    queries = _results(loaded, [s.path for s in samples], [s.label for s in samples],
                       scores, rows)
    model_summary = {"path": str(info.path), "sha256": info.sha256, "role": info.role,
                     "architecture": info.architecture, "resolution": resolution,
                     "device": str(torch_device), "runtime": query_model.runtime}
    return SearchResult(queries, k, params, round(encode_ms, 3), round(search_ms, 4),
                        loaded.info.as_dict(), model_summary, warnings, Path(root))


def search_embeddings(queries_file: str | os.PathLike, index_file: str | os.PathLike, *,
                      k: int = 10, nprobe: int | None = None, ef: int | None = None,
                      reporter: Reporter | None = None) -> SearchResult:
    """Search ``index_file`` with the rows of an embeddings file (no model runs)."""
    from raml_cli.store import read_embeddings

    reporter = reporter or NULL_REPORTER
    query = read_embeddings(queries_file)
    loaded = read_index_file(index_file)
    if query.dim != loaded.info.dim:
        raise InputError(f"{queries_file} holds {query.dim}-d rows but the index "
                         f"{loaded.info.path} holds {loaded.info.dim}-d rows: they come from "
                         "different models.")
    warnings: list[str] = []
    q_sha, db_sha = query.attrs.get("model_sha256"), loaded.info.database.get("model_sha256")
    if q_sha and db_sha and q_sha != db_sha:
        # The query file names its model but not that model's teacher: say so, not refuse.
        warnings.append(f"{queries_file} was encoded by the model {str(q_sha)[:12]}, the "
                        f"database by {str(db_sha)[:12]}; raml cannot check from the files "
                        "that the first is a student of the second (search with the model "
                        "file to have it checked)")
    for text in warnings:
        reporter.warn(text)
    params = _params(loaded, nprobe, ef)
    scores, rows, search_ms = search_vectors(loaded, query.embeddings, k, params)
    queries = _results(loaded, query.paths, query.labels.tolist(), scores, rows)
    return SearchResult(queries, k, params, None, round(search_ms, 4), loaded.info.as_dict(),
                        None, warnings)
