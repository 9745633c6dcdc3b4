"""Positive ranks from the blocked, thresholded search equal a full sort of every row."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from raml_cli.errors import InputError
from raml_cli.evaluate import neighbours
from raml_cli.evaluate.neighbours import ClassIndex, count_positives, positive_ranks


def collect(query, query_labels, database, database_labels, self_index=None, **kwargs):
    out = {}
    for block in positive_ranks(query, query_labels,
                                database, database_labels, self_index,
                                **kwargs):
        for i, q in enumerate(block.query_index):
            out[int(q)] = block.ranks[block.offsets[i]:block.offsets[i + 1]].tolist()
    return out


def tie_heavy_problem(dyadic, seed: int, same: bool):
    rng = np.random.default_rng(seed)
    database = dyadic(rng, 40, 3)
    database[5] = database[17] = database[30]  # duplicated vectors: exact ties
    database_labels = rng.integers(-1, 8, size=40)
    database_labels[39] = 99  # a singleton class
    if same:
        return database, database_labels, database, database_labels
    query = dyadic(rng, 23, 3)
    query_labels = rng.integers(-1, 9, size=23)
    query_labels[0] = 99
    return query, query_labels, database, database_labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("same", [True, False])
def test_ranks_match_full_sort(dyadic, brute_force_ranks, seed, same):
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, seed, same)
    self_index = np.arange(len(query)) if same else None
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    got = collect(query, q_labels, database, db_labels, self_index, block_size=4, chunk_size=7)
    assert got == expected


@pytest.mark.parametrize("product", ["numpy", "torch"])
def test_every_score_product_gives_the_full_sort_ranks(dyadic, brute_force_ranks, product):
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, 7, same=False)
    expected = brute_force_ranks(query, q_labels, database, db_labels, None)
    assert collect(query, q_labels, database, db_labels, block_size=5, chunk_size=8,
                   product=product) == expected


def test_unknown_score_product_is_refused():
    with pytest.raises(InputError, match="choose one of numpy, torch"):
        next(positive_ranks(np.eye(2), [0, 0], np.eye(2), [0, 0], product="blas"))


@pytest.mark.parametrize(("block_size", "chunk_size"), [(1, 1), (3, 5), (64, 4096)])
def test_block_and_chunk_sizes_do_not_change_ranks(dyadic, brute_force_ranks, block_size,
                                                   chunk_size):
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, 11, same=True)
    self_index = np.arange(len(query))
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    assert collect(query, q_labels, database, db_labels, self_index, block_size=block_size,
                   chunk_size=chunk_size) == expected


@pytest.mark.parametrize("seed", range(3))
def test_blocks_of_more_parts_than_threads_give_the_full_sort_ranks(
        dyadic, brute_force_ranks, monkeypatch, seed):
    # A block over a small database is cut into more parts than threads (here 23 queries
    # into parts of at most 3 rows), shared out to the threads: the same ranks.
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    monkeypatch.setattr(neighbours, "MAX_PART_ROWS", 3)
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, seed, same=False)
    expected = brute_force_ranks(query, q_labels, database, db_labels, None)
    assert collect(query, q_labels, database, db_labels, chunk_size=6) == expected
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, seed, same=True)
    self_index = np.arange(len(query))
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    assert collect(query, q_labels, database, db_labels, self_index) == expected


@pytest.mark.parametrize("same", [True, False])
def test_a_positive_inside_the_counted_zone_sends_its_query_to_the_unthresholded_scan(
        dyadic, brute_force_ranks, monkeypatch, same):
    # The items between a query's lowest positive and its next are only counted. Were the
    # second lowest positive score misjudged so that positives fall inside that zone, they
    # are not found, and their queries are ranked again with every item a candidate.
    lowest_two = neighbours._lowest_positive_scores
    redone = []

    def misjudged(*args):
        lowest, second = lowest_two(*args)
        return lowest, second + np.float32(4.0)

    def unthresholded(ctx, rows, queries, missed):
        redone.append(missed.size)
        return original(ctx, rows, queries, missed)

    original = neighbours._unthresholded_ranks
    monkeypatch.setattr(neighbours, "_lowest_positive_scores", misjudged)
    monkeypatch.setattr(neighbours, "_unthresholded_ranks", unthresholded)
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, 3, same)
    self_index = np.arange(len(query)) if same else None
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    assert collect(query, q_labels, database, db_labels, self_index, block_size=8,
                   chunk_size=9) == expected
    assert sum(redone) > 0


def test_self_row_that_is_not_a_positive_is_still_removed(brute_force_ranks):
    # The excluded row scores highest but has another label: removing it moves the
    # positive from rank 1 to rank 0.
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    database = np.array([[1.0, 0.0], [0.5, 0.0], [0.25, 0.0]], dtype=np.float32)
    got = collect(query, np.array([1]), database, np.array([2, 1, 3]), np.array([0]))
    assert got == {0: [0]}
    assert collect(query, np.array([1]), database, np.array([2, 1, 3])) == {0: [1]}


def test_missed_positive_falls_back_to_an_unthresholded_scan(dyadic, brute_force_ranks,
                                                             monkeypatch):
    # A negative "error bound" raises every threshold above the positives, so none are
    # found in the first pass; the exact fallback must still give the full-sort ranks.
    monkeypatch.setattr(neighbours, "_FLOAT32_UNIT_ROUNDOFF", -1.0)
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, 5, same=False)
    expected = brute_force_ranks(query, q_labels, database, db_labels, None)
    assert collect(query, q_labels, database, db_labels, block_size=8,
                   chunk_size=6) == expected


def test_candidate_overflow_splits_the_block(dyadic, brute_force_ranks, monkeypatch):
    calls = []
    real = neighbours._rank_block

    def spy(ctx, rows, expected):
        result = real(ctx, rows, expected)
        calls.append((len(rows), result is None))
        return result

    monkeypatch.setattr(neighbours, "_rank_block", spy)
    query, q_labels, database, db_labels = tie_heavy_problem(dyadic, 2, same=True)
    self_index = np.arange(len(query))
    expected = brute_force_ranks(query, q_labels, database, db_labels, self_index)
    # max_candidates is raised to the database size (40), so 16 queries cannot fit.
    got = collect(query, q_labels, database, db_labels, self_index, block_size=16,
                  max_candidates=1)
    assert got == expected
    first_size, first_failed = calls[0]
    assert first_failed and 8 < first_size <= 16
    assert all(size < first_size for size, failed in calls[1:] if not failed)


def test_float_unit_vectors_without_ties(brute_force_ranks):
    rng = np.random.default_rng(2)
    database = rng.standard_normal((100, 16)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    labels = rng.integers(0, 15, size=100)
    scores = database.astype(np.float64) @ database.T.astype(np.float64)
    gaps = np.diff(np.sort(scores, axis=1), axis=1)
    assert gaps.min() > 1e-6  # float32 and float64 rankings agree
    self_index = np.arange(100)
    expected = brute_force_ranks(database, labels, database, labels, self_index)
    assert collect(database, labels, database, labels, self_index, block_size=32,
                   chunk_size=50) == expected


def test_count_positives_handles_unknown_labels_and_self():
    db_labels = np.array([3, 3, -1, 5, 3])
    index = ClassIndex.from_labels(db_labels)
    assert index.labels.tolist() == [3, 5]
    assert index.members.tolist() == [0, 1, 4, 3]
    q_labels = np.array([3, 3, -1, 5, 7])
    self_index = np.array([0, -1, 2, 1, -1])
    # q0: class 3 has 3 rows, its own row 0 is one of them -> 2; q1: 3; q2: label -1 -> 0;
    # q3: class 5 has 1 row, the excluded row 1 is of class 3 -> 1; q4: unknown class -> 0.
    assert count_positives(q_labels, db_labels, self_index, index).tolist() == [2, 3, 0, 1, 0]


def test_queries_without_positive_are_not_yielded():
    database = np.eye(3, dtype=np.float32)
    got = collect(database, np.array([0, -1, 4]), database, np.array([0, 1, 2]))
    assert list(got) == [0]


def test_row_score_key_orders_rows_then_scores_descending():
    scores = np.array([0.5, -0.0, 0.0, -1e-30, 1e-30, -2.0, np.inf, -np.inf, 3.0],
                      dtype=np.float32)
    rows = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1])
    keys = neighbours._row_score_key(rows, scores.copy())
    assert keys[1] == keys[2]  # -0.0 and +0.0 are the same score
    order = np.argsort(keys, kind="stable")
    assert scores[order].tolist()[:-1] == sorted(scores[:-1].tolist(), reverse=True)
    assert order[-1] == 8


def test_default_sizes_give_each_thread_enough_tiles(monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    assert neighbours.default_chunk_size(60502) == 4096  # SOP: full-size chunks
    assert neighbours.default_chunk_size(6050) == 512  # a dozen tiles per thread
    assert neighbours.default_chunk_size(100) == 512
    assert neighbours.default_chunk_size(6050, "torch") == 4096
    assert neighbours.default_block_size() == 1024
    # Against a small database, blocks of at least 2^26 pairs: 6,050 x 6,050 is one block.
    assert neighbours.default_block_size("numpy", 6050) == 11092
    assert neighbours.default_block_size("numpy", 60502) == 1109
    assert neighbours.default_block_size("numpy", 1 << 20) == 1024
    assert neighbours.default_block_size("numpy", 100) == neighbours.MAX_BLOCK_SIZE
    assert neighbours.default_block_size("torch", 6050) == 1024
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 16)
    assert neighbours.default_block_size() == 4096  # 256 queries per thread
    assert neighbours.default_block_size("numpy", 60502) == 4096
    assert neighbours.default_block_size("torch") == 1024


def test_a_large_block_is_cut_into_parts_of_at_most_max_part_rows(monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 2)
    engine = neighbours._NumpyEngine.__new__(neighbours._NumpyEngine)
    engine._threads = 2
    assert engine._spans(1009) == [(0, 504), (504, 1009)]  # one part per thread
    spans = engine._spans(6050)
    assert len(spans) == 6 and spans[0] == (0, 1008) and spans[-1][1] == 6050
    assert all(hi - lo <= neighbours.MAX_PART_ROWS for lo, hi in spans)
    assert engine._spans(1) == [(0, 1)]


def test_parts_are_shared_out_to_every_thread_and_returned_in_order(monkeypatch):
    monkeypatch.setattr(neighbours, "scan_threads", lambda: 3)
    engine = neighbours._NumpyEngine(None, "cpu")
    try:
        threads: set[int] = set()

        def square(part: int) -> int:
            threads.add(threading.get_ident())
            time.sleep(0.01)
            return part * part

        assert engine._each(list(range(12)), square) == [p * p for p in range(12)]
        assert len(threads) == 3
        with pytest.raises(ZeroDivisionError):
            engine._each([1, 0, 2, 3], lambda part: 1 // part)
    finally:
        engine.close()
