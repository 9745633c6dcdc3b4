"""The spread of an embedding space: definitions on hand-built vectors."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from raml_cli.evaluate.space import (
    COLLAPSE_MEAN_COSINE,
    MAX_SAMPLE_ROWS,
    collapse_warning,
    mean_pairwise_cosine,
    sample_rows,
    space_spread,
)


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def cone(rows: int, dim: int = 16, width: float = 0.05, seed: int = 0) -> np.ndarray:
    """Unit vectors around one axis: noise of ``width`` per coordinate."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(dim, dtype=np.float32)
    axis[0] = 1.0
    return unit(axis + width * rng.standard_normal((rows, dim)))


def test_orthogonal_rows_have_zero_mean_and_zero_nearest_cosine():
    spread = space_spread(np.eye(6, dtype=np.float32))
    assert spread.mean_cosine == pytest.approx(0.0, abs=1e-12)
    assert spread.nn_cosine == pytest.approx(0.0, abs=1e-12)
    assert spread.rows_sampled == 6 and spread.num_rows == 6
    assert not spread.collapsed


def test_mean_is_over_distinct_pairs_only():
    # Pairs of [1,0], [1,0], [0,1]: cosines 1, 0, 0 -> mean 1/3 (the diagonal would give 5/9).
    rows = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert mean_pairwise_cosine(rows) == pytest.approx(1 / 3)
    opposite = np.array([[1, 0], [-1, 0]], dtype=np.float32)
    assert space_spread(opposite).mean_cosine == pytest.approx(-1.0)
    assert space_spread(opposite).nn_cosine == pytest.approx(-1.0)


def test_nearest_neighbour_is_the_best_other_row():
    rows = unit([[1, 0], [1, 0.1], [0, 1], [-1, 0.2]])
    expected = rows @ rows.T
    np.fill_diagonal(expected, -np.inf)
    spread = space_spread(rows, block_rows=1)
    assert spread.nn_cosine == pytest.approx(expected.max(axis=1).mean(), abs=1e-6)


def test_self_is_excluded_by_index_not_by_value():
    # Rows 0 and 1 are the same image twice: each is the other's nearest neighbour (1),
    # row 2 is orthogonal to both (0). A value-based exclusion would drop both copies.
    rows = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert space_spread(rows).nn_cosine == pytest.approx((1 + 1 + 0) / 3)
    # Without duplicates no row may find itself: orthogonal rows stay at 0, never 1.
    assert space_spread(np.eye(3, dtype=np.float32), block_rows=2).nn_cosine == 0.0


def test_a_tight_cone_is_collapsed_and_the_warning_says_what_to_do():
    spread = space_spread(cone(300, width=0.05))
    assert spread.mean_cosine > COLLAPSE_MEAN_COSINE and spread.collapsed
    assert spread.nn_cosine > spread.mean_cosine
    text = collapse_warning("the database set db.h5", spread)
    assert "collapsed" in text and "narrow cone" in text and "asymmetric search" in text
    assert "Retrain the teacher" in text and "Diagnosing a collapsed space" in text
    assert f"{spread.mean_cosine:.4f}" in text
    assert not space_spread(cone(300, width=1.0)).collapsed


def test_seeded_sample_gives_the_same_numbers_and_respects_its_bound():
    rows = cone(MAX_SAMPLE_ROWS + 500, dim=8, width=0.5, seed=3)
    first, again = space_spread(rows), space_spread(rows.copy())
    assert first == again
    assert first.rows_sampled == MAX_SAMPLE_ROWS and first.num_rows == len(rows)
    index = sample_rows(len(rows))
    assert index.size == MAX_SAMPLE_ROWS == np.unique(index).size
    assert (np.diff(index) > 0).all() and index.max() < len(rows)
    assert not np.array_equal(index, np.arange(MAX_SAMPLE_ROWS))  # a sample, not a prefix
    assert not np.array_equal(sample_rows(len(rows), seed=1), index)
    # The mean is that of the sampled rows; the neighbours are searched in all rows.
    assert first.mean_cosine == pytest.approx(mean_pairwise_cosine(rows[index]))
    scores = rows[index] @ rows.T
    scores[np.arange(index.size), index] = -np.inf
    assert first.nn_cosine == pytest.approx(scores.max(axis=1).mean(), abs=1e-6)
    small = space_spread(rows, max_rows=10)
    assert small.rows_sampled == 10


def test_block_size_does_not_change_the_result():
    # Equal up to float32 rounding: BLAS may sum a product of another shape in another
    # order (OpenBLAS's kernels for AMD CPUs do, for 7 rows and 257).
    rows = cone(257, dim=8, width=0.3, seed=5)
    small, large = asdict(space_spread(rows, block_rows=7)), asdict(space_spread(rows))
    assert small == pytest.approx(large, rel=1e-6, abs=1e-7)


def test_one_row_has_no_pairs():
    spread = space_spread(np.ones((1, 4), dtype=np.float32) / 2)
    assert np.isnan(spread.mean_cosine) and np.isnan(spread.nn_cosine)
    assert not spread.collapsed


def test_without_neighbours_only_the_mean_is_measured():
    spread = space_spread(cone(50), neighbours=False)
    assert np.isnan(spread.nn_cosine) and spread.collapsed
    assert "nearest-neighbour" not in collapse_warning("q.h5", spread)
