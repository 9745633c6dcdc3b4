"""Each metric on tiny rankings worked out by hand (definitions: docs/evaluate.md)."""

from __future__ import annotations

import numpy as np
import pytest

from raml_cli.evaluate import evaluate_arrays
from raml_cli.evaluate.metrics import metric_keys, per_query_metrics
from raml_cli.evaluate.neighbours import PositiveRanks


def block(*rank_lists: list[int]) -> PositiveRanks:
    offsets = np.cumsum([0] + [len(r) for r in rank_lists])
    return PositiveRanks(np.arange(len(rank_lists)), offsets.astype(np.int64),
                         np.concatenate([np.asarray(r, dtype=np.int64) for r in rank_lists]))


def test_positives_at_ranks_0_and_2():
    # Ranking: + - + (...). P = 2.
    values = per_query_metrics(block([0, 2]), ks=(1, 2, 3))
    assert values["recall@1"][0] == 1.0
    assert values["map"][0] == pytest.approx((1 / 1 + 2 / 3) / 2)  # 0.8333
    # trapezoid: i=0,r=0: (1 + 1)/2 = 1;  i=1,r=2: (1/2 + 2/3)/2 = 7/12
    assert values["map_trapezoid"][0] == pytest.approx((1 + 7 / 12) / 2)
    # MAP@R, R = 2: only rank 0 is within the first 2 -> (1/1) / 2
    assert values["map@r"][0] == pytest.approx(0.5)


def test_single_positive_at_rank_3():
    values = per_query_metrics(block([3]), ks=(1, 2, 4))
    assert [values[f"recall@{k}"][0] for k in (1, 2, 4)] == [0.0, 0.0, 1.0]
    assert values["map"][0] == pytest.approx(1 / 4)
    assert values["map_trapezoid"][0] == pytest.approx((0 / 3 + 1 / 4) / 2)
    assert values["map@r"][0] == 0.0  # R = 1 and the first item is a negative


def test_three_positives_at_ranks_1_2_5():
    values = per_query_metrics(block([1, 2, 5]), ks=(1, 2))
    assert values["recall@1"][0] == 0.0 and values["recall@2"][0] == 1.0
    assert values["map"][0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 6) / 3)
    trapezoid = ((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 5 + 3 / 6) / 2) / 3
    assert values["map_trapezoid"][0] == pytest.approx(trapezoid)
    assert values["map@r"][0] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_perfect_ranking_scores_one_everywhere():
    values = per_query_metrics(block([0, 1, 2, 3]), ks=(1,))
    for key in metric_keys((1,)):
        assert values[key][0] == pytest.approx(1.0)


def test_several_queries_in_one_block_are_independent():
    together = per_query_metrics(block([0, 2], [3], [1, 2, 5]), ks=(1, 2))
    for i, ranks in enumerate(([0, 2], [3], [1, 2, 5])):
        alone = per_query_metrics(block(ranks), ks=(1, 2))
        for key, values in alone.items():
            assert together[key][i] == values[0]


def one_dim(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None]


def test_end_to_end_ranking_by_inner_product():
    # Scores 4, 3, 2, 1 for rows 0..3; positives rows 0 and 2 -> ranks 0 and 2.
    metrics = evaluate_arrays(one_dim([1]), [7], one_dim([4, 3, 2, 1]), [7, 1, 7, 1],
                              ks=(1, 2), exclude_self=False)
    assert metrics == pytest.approx({"recall@1": 1.0, "recall@2": 1.0, "map": 5 / 6,
                                     "map_trapezoid": (1 + 7 / 12) / 2, "map@r": 0.5})


def test_ties_go_to_the_lower_database_row():
    # Rows 0 (negative) and 1 (positive) tie at score 2: row 0 comes first.
    metrics = evaluate_arrays(one_dim([1]), [0], one_dim([2, 2, 1]), [1, 0, 0], ks=(1,),
                              exclude_self=False)
    assert metrics["recall@1"] == 0.0
    assert metrics["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Swapping the labels of the tied rows puts the positive first.
    metrics = evaluate_arrays(one_dim([1]), [0], one_dim([2, 2, 1]), [0, 1, 0], ks=(1,),
                              exclude_self=False)
    assert metrics["recall@1"] == 1.0
    assert metrics["map"] == pytest.approx((1 + 2 / 3) / 2)


def test_self_exclusion_removes_the_query_from_its_ranking():
    vectors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    labels = [0, 1, 0, 1]
    excluded = evaluate_arrays(vectors, labels, vectors, labels, ks=(1,), exclude_self=True)
    # q0: scores 1:.8, 2:.6, 3:0 -> + at rank 1;         AP 1/2
    # q1: scores 0:.8, 2:.96, 3:.6 -> order 2,0,3 -> + at 2; AP 1/3
    # q2: scores 0:.6, 1:.96, 3:.8 -> order 1,3,0 -> + at 2; AP 1/3
    # q3: scores 0:0, 1:.6, 2:.8 -> order 2,1,0 -> + at 1;   AP 1/2
    assert excluded["recall@1"] == 0.0
    assert excluded["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    included = evaluate_arrays(vectors, labels, vectors, labels, ks=(1,), exclude_self=False)
    assert included["recall@1"] == 1.0  # each query finds itself first
