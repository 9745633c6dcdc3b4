"""The two ways of scanning score blocks give the full-sort ranks: NumPy with the scan
split across threads, and torch (the GPU path, run here with device="cpu")."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.evaluate import neighbours, torch_ranks
from raml_cli.evaluate.neighbours import positive_ranks


def collect(query, query_labels, database, database_labels, self_index=None, **kwargs):
    out = {}
    for block in positive_ranks(query, query_labels, database, database_labels, self_index,
                                **kwargs):
        for i, q in enumerate(block.query_index):
            out[int(q)] = block.ranks[block.offsets[i]:block.offsets[i + 1]].tolist()
    return out


def random_problem(dyadic, seed: int, queries: int = 37, items: int = 61, same: bool = False):
    """Dyadic vectors (exact scores, many ties), duplicated rows and unknown labels."""
    rng = np.random.default_rng(seed)
    database = dyadic(rng, items, 4)
    database[rng.integers(0, items, 6)] = database[rng.integers(0, items, 6)]  # duplicates
    database_labels = rng.integers(-1, 6, size=items)
    if same:
        return database, database_labels, database, database_labels
    query = dyadic(rng, queries, 4)
    query[:5] = database[:5]  # queries equal to database rows
    return query, rng.integers(-1, 7, size=queries), database, database_labels


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("same", [True, False])
def test_scan_threads_give_the_full_sort_ranks(dyadic, brute_force_ranks, monkeypatch,
                                               threads, same):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: threads)
    query, q_labels, database, db_labels = random_problem(dyadic, threads, same=same)
    self_index = np.arange(len(query)) if same else None
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    for block_size, chunk_size in [(1, 1), (4, 7), (9, 13), (64, 4096)]:
        assert collect(query, q_labels, database, db_labels, self_index,
                       block_size=block_size, chunk_size=chunk_size) == expected


def test_scan_threads_with_fallback_and_overflow(dyadic, brute_force_ranks, monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 3)
    query, q_labels, database, db_labels = random_problem(dyadic, 8, same=True)
    self_index = np.arange(len(query))
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    # Thresholds above every positive: each query goes through the unthresholded redo.
    monkeypatch.setattr(neighbours, "_FLOAT32_UNIT_ROUNDOFF", -1.0)
    assert collect(query, q_labels, database, db_labels, self_index, block_size=16,
                   chunk_size=10) == expected
    monkeypatch.undo()
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 3)
    # Too many candidates for a block of 16: it is split, the ranks stay the same.
    assert collect(query, q_labels, database, db_labels, self_index, block_size=16,
                   chunk_size=10, max_candidates=1) == expected


def test_scan_threads_are_released(dyadic, monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    query, q_labels, database, db_labels = random_problem(dyadic, 3)

    def scanners():
        return [t for t in threading.enumerate() if t.name.startswith("raml-scan")]

    before = len(scanners())
    blocks = positive_ranks(query, q_labels, database, db_labels, block_size=4)
    next(blocks)
    blocks.close()  # a caller that stops early
    list(positive_ranks(query, q_labels, database, db_labels, block_size=4))
    assert len(scanners()) == before


def test_a_failing_scan_thread_raises_in_the_caller(dyadic, monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    calls = []
    real = neighbours._ScanPart.scan

    def scan(part, *args):
        name = threading.current_thread().name
        calls.append(name)
        if name.startswith("raml-scan"):
            raise MemoryError("no room for the candidates")
        time.sleep(0.01)  # the caller's thread is slow, so the worker surely takes a tile
        return real(part, *args)

    monkeypatch.setattr(neighbours._ScanPart, "scan", scan)
    query, q_labels, database, db_labels = random_problem(dyadic, 4)
    with pytest.raises(MemoryError, match="no room"):
        collect(query, q_labels, database, db_labels, block_size=8, chunk_size=5)
    assert any(name.startswith("raml-scan") for name in calls)
    # The other thread stopped at its next tile instead of scanning the rest alone.
    assert len(calls) < 2 * -(-len(database) // 5)


def test_blas_runs_single_threaded_during_the_search_only(dyadic, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():  # of NumPy's BLAS (SciPy may have loaded one of its own)
        libraries = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        numpys = [lib for lib in libraries if "numpy" in lib["filepath"]] or libraries
        return {lib["num_threads"] for lib in numpys}

    before = blas_threads()
    if before in (set(), {1}):
        pytest.skip("no multi-threaded BLAS found")
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    seen = []
    real = neighbours._ScanPart.scan

    def scan(part, *args):
        seen.append(blas_threads())
        return real(part, *args)

    monkeypatch.setattr(neighbours._ScanPart, "scan", scan)
    query, q_labels, database, db_labels = random_problem(dyadic, 5)
    collect(query, q_labels, database, db_labels, block_size=8, chunk_size=9)
    assert seen and all(threads == {1} for threads in seen)
    assert blas_threads() == before


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("same", [True, False])
def test_torch_engine_on_the_cpu_gives_the_numpy_ranks(dyadic, brute_force_ranks, seed, same):
    query, q_labels, database, db_labels = random_problem(dyadic, 10 + seed, same=same)
    self_index = np.arange(len(query)) if same else None
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    kwargs = {"block_size": 6, "chunk_size": 11}
    numpy_ranks = collect(query, q_labels, database, db_labels, self_index, **kwargs)
    torch_ranks_ = collect(query, q_labels, database, db_labels, self_index,
                           product="torch", device="cpu", **kwargs)
    assert torch_ranks_ == numpy_ranks == expected


def test_torch_engine_fallback_and_overflow(dyadic, brute_force_ranks, monkeypatch):
    query, q_labels, database, db_labels = random_problem(dyadic, 21, same=True)
    self_index = np.arange(len(query))
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    assert collect(query, q_labels, database, db_labels, self_index, block_size=16,
                   product="torch", max_candidates=1) == expected
    monkeypatch.setattr(neighbours, "_FLOAT32_UNIT_ROUNDOFF", -1.0)
    assert collect(query, q_labels, database, db_labels, self_index, block_size=16,
                   chunk_size=9, product="torch") == expected


def test_torch_engine_on_float_vectors_matches_numpy():
    # Well separated float32 scores: the two BLAS libraries rank them identically.
    rng = np.random.default_rng(2)
    database = rng.standard_normal((100, 16)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    labels = rng.integers(0, 15, size=100)
    scores = database.astype(np.float64) @ database.T.astype(np.float64)
    assert np.diff(np.sort(scores, axis=1), axis=1).min() > 1e-6
    self_index = np.arange(100)
    numpy_ranks = collect(database, labels, database, labels, self_index, block_size=32,
                          chunk_size=50)
    assert collect(database, labels, database, labels, self_index, block_size=32,
                   chunk_size=50, product="torch") == numpy_ranks


def test_torch_keys_order_like_the_numpy_keys():
    scores = np.array([0.5, -0.0, 0.0, -1e-30, 1e-30, -2.0, np.inf, -np.inf, 3.0, -3.0,
                       np.finfo(np.float32).min, np.finfo(np.float32).max], dtype=np.float32)
    rows = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    numpy_keys = neighbours._row_score_key(rows, scores.copy())
    torch_keys = torch_ranks.row_score_key(torch.from_numpy(rows), torch.from_numpy(scores))
    assert torch_keys.numpy().tolist() == numpy_keys.astype(np.int64).tolist()


def test_exact_float32_switches_tf32_off_and_restores_it():
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        with torch_ranks.exact_float32():
            assert matmul.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        assert matmul.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved[1])
        matmul.allow_tf32 = saved[0]


def test_numpy_product_refuses_a_gpu():
    with pytest.raises(InputError, match="product='torch'"):
        next(positive_ranks(np.eye(2), [0, 0], np.eye(2), [0, 0], device="cuda"))


@pytest.mark.cuda
def test_torch_engine_on_cuda_gives_the_numpy_ranks(dyadic, brute_force_ranks):
    for seed, same in [(0, True), (1, False), (2, True)]:
        query, q_labels, database, db_labels = random_problem(dyadic, seed, 400, 900, same)
        self_index = np.arange(len(query)) if same else None
        numpy_ranks = collect(query, q_labels, database, db_labels, self_index,
                              block_size=128, chunk_size=256)
        cuda_ranks = collect(query, q_labels, database, db_labels, self_index,
                             block_size=128, chunk_size=256, product="torch", device="cuda")
        assert cuda_ranks == numpy_ranks
    small = random_problem(dyadic, 5)
    assert collect(*small, product="torch", device="cuda") == brute_force_ranks(*small, None)


def test_the_last_chunk_is_cut_into_narrower_tiles():
    assert neighbours._tile_columns(1000, 300, 4) == [(0, 300), (300, 300), (600, 300),
                                                       (900, 100)]  # too narrow to cut
    assert neighbours._tile_columns(6050, 4096, 4) == [(0, 4096), (4096, 1954)]
    assert neighbours._tile_columns(60502, 4034, 4)[-5:] == [
        (52442, 4034), (56476, 1007), (57483, 1007), (58490, 1007), (59497, 1005)]
    assert neighbours._tile_columns(0, 512, 4) == []


@pytest.mark.parametrize("threads", [1, 2])
def test_cut_tail_tiles_give_the_full_sort_ranks(dyadic, brute_force_ranks, monkeypatch,
                                                 threads):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: threads)
    monkeypatch.setattr(neighbours, "MIN_TAIL_WIDTH", 100)
    query, q_labels, database, db_labels = random_problem(dyadic, 20 + threads, queries=90,
                                                          items=700)
    expected = brute_force_ranks(query, q_labels, database, db_labels, None)
    assert collect(query, q_labels, database, db_labels, block_size=32,
                   chunk_size=512) == expected
