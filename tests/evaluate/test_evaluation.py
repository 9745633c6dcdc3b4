"""evaluate_arrays / evaluate_sets against the brute-force reference, and their rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raml_cli.errors import DataError, InputError
from raml_cli.evaluate import (
    EvaluationResult,
    check_ks,
    evaluate_arrays,
    evaluate_sets,
    space_spread,
)
from raml_cli.store import EmbeddingSet, default_attributes, read_embeddings, write_embeddings

KS = (1, 2, 4, 8, 16)


def problem(dyadic, seed: int, rows: int = 60, dim: int = 3, classes: int = 12):
    rng = np.random.default_rng(seed)
    vectors = dyadic(rng, rows, dim)
    vectors[7] = vectors[8] = vectors[rows - 2]  # duplicates: exact ties
    labels = rng.integers(-1, classes, size=rows)
    labels[0] = 1000  # a singleton class: no positive once self is excluded
    return vectors, labels


@pytest.mark.parametrize("seed", range(3))
def test_symmetric_with_self_excluded_matches_brute_force(dyadic, brute_force, seed):
    vectors, labels = problem(dyadic, seed)
    expected, without = brute_force(vectors, labels, vectors, labels, KS, np.arange(60))
    got = evaluate_arrays(vectors, labels, vectors, labels, KS, exclude_self=True,
                          block_size=7, chunk_size=9)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # The queries left out (the singleton class, unlabelled rows) are raml's count too.
    result = evaluate_sets(embedding_set(vectors, labels, [f"{i}.jpg" for i in range(60)]),
                           ks=KS, block_size=7, chunk_size=9)
    assert result.self_excluded and result.queries_without_positive == without >= 1


@pytest.mark.parametrize("seed", range(3))
def test_self_included_matches_brute_force(dyadic, brute_force, seed):
    vectors, labels = problem(dyadic, seed)
    expected, _ = brute_force(vectors, labels, vectors, labels, KS, None)
    got = evaluate_arrays(vectors, labels, vectors, labels, KS, exclude_self=False,
                          block_size=5, chunk_size=11)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_disjoint_query_and_database_match_brute_force(dyadic, brute_force, seed):
    database, db_labels = problem(dyadic, seed, rows=50)
    query, q_labels = problem(dyadic, seed + 100, rows=31)
    expected, _ = brute_force(query, q_labels, database, db_labels, KS, None)
    got = evaluate_arrays(query, q_labels, database, db_labels, KS, exclude_self=False,
                          block_size=4, chunk_size=13)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_results_are_identical_for_every_block_size(dyadic):
    vectors, labels = problem(dyadic, 9, rows=80)
    results = [evaluate_arrays(vectors, labels, vectors, labels, KS, exclude_self=True,
                               block_size=b, chunk_size=c)
               for b, c in [(1, 1), (2, 3), (16, 7), (80, 80), (512, 4096)]]
    assert all(result == results[0] for result in results)  # bit-identical


def test_torch_tensors_are_accepted(dyadic):
    torch = pytest.importorskip("torch")
    vectors, labels = problem(dyadic, 5)
    from_numpy = evaluate_arrays(vectors, labels, vectors, labels, KS, exclude_self=True)
    tensor = torch.from_numpy(vectors).requires_grad_(True)
    from_torch = evaluate_arrays(tensor, torch.from_numpy(labels), tensor, labels, KS,
                                 exclude_self=True, product="torch")
    assert from_torch == from_numpy


def test_metric_keys_and_ranges(dyadic):
    vectors, labels = problem(dyadic, 4)
    got = evaluate_arrays(vectors, labels, vectors, labels, (8, 1), exclude_self=True)
    assert list(got) == ["recall@1", "recall@8", "map", "map_trapezoid", "map@r"]
    assert all(0.0 <= value <= 1.0 for value in got.values())
    assert got["recall@1"] <= got["recall@8"]


@pytest.mark.parametrize("ks", [[], [0], [1, -2], [1.5], [True]])
def test_bad_cutoffs_are_rejected(ks):
    with pytest.raises(InputError, match="integers >= 1"):
        check_ks(ks)


def test_cutoffs_are_sorted_and_deduplicated():
    assert check_ks([8, 1, 2, 1]) == (1, 2, 8)


def test_array_validation_messages():
    vectors = np.eye(3, dtype=np.float32)
    labels = np.array([0, 0, 1])
    with pytest.raises(InputError, match="3-d but database vectors are 2-d"):
        evaluate_arrays(vectors, labels, vectors[:, :2], labels, exclude_self=False)
    with pytest.raises(InputError, match="exclude_self pairs"):
        evaluate_arrays(vectors, labels, vectors[:2], labels[:2], exclude_self=True)
    with pytest.raises(InputError, match="NaN or Inf"):
        evaluate_arrays(vectors * np.nan, labels, vectors, labels, exclude_self=False)
    with pytest.raises(InputError, match="one per row"):
        evaluate_arrays(vectors, labels[:2], vectors, labels, exclude_self=False)
    with pytest.raises(DataError, match="No query has a positive"):
        evaluate_arrays(vectors, [5, 6, 7], vectors, labels, exclude_self=False)


def embedding_set(vectors, labels, paths, **attrs) -> EmbeddingSet:
    return EmbeddingSet(np.asarray(vectors, np.float32), np.asarray(labels, np.int64),
                        list(paths), default_attributes(**attrs))


def float_problem(rows: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, 8))
    labels = rng.integers(0, 12, size=rows)
    vectors = (centres[labels] + 0.8 * rng.standard_normal((rows, 8))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels, [f"img/{i:03d}.jpg" for i in range(rows)]


def test_one_file_means_symmetric_with_self_excluded(brute_force):
    vectors, labels, paths = float_problem()
    labels[3] = 77  # singleton
    result = evaluate_sets(embedding_set(vectors, labels, paths, role="teacher"))
    expected, without = brute_force(vectors, labels, vectors, labels, (1, 2, 4, 8),
                                    np.arange(90))
    assert result.self_excluded is True
    assert result.num_queries == result.num_database == 90
    assert result.queries_without_positive == without == 1
    assert result.metrics == pytest.approx(expected, rel=1e-12)
    assert result.query["role"] == result.database["role"] == "teacher"


def test_same_paths_same_order_excludes_self_by_default():
    vectors, labels, paths = float_problem()
    query = embedding_set(vectors, labels, paths, role="student")
    database = embedding_set(vectors, labels, paths, role="teacher")
    assert evaluate_sets(query, database).self_excluded is True
    forced = evaluate_sets(query, database, exclude_self=False)
    assert forced.self_excluded is False
    assert forced.metrics["recall@1"] == 1.0  # each query finds itself


def test_different_paths_do_not_exclude_by_default(brute_force):
    vectors, labels, paths = float_problem()
    query = embedding_set(vectors[:30], labels[:30], paths[:30])
    database = embedding_set(vectors, labels, paths)
    result = evaluate_sets(query, database)
    expected, _ = brute_force(vectors[:30], labels[:30], vectors, labels, (1, 2, 4, 8), None)
    assert result.self_excluded is False
    assert result.metrics == pytest.approx(expected, rel=1e-12)


def test_forced_exclusion_matches_images_by_path():
    vectors, labels, paths = float_problem()
    perm = np.random.default_rng(1).permutation(90)
    database = embedding_set(vectors[perm], labels[perm], [paths[i] for i in perm])
    query = embedding_set(vectors, labels, paths)
    shuffled = evaluate_sets(query, database, exclude_self=True)
    in_order = evaluate_sets(query, embedding_set(vectors, labels, paths))
    assert shuffled.self_excluded is True
    # No ties in this float data, so the row order of the database does not matter.
    assert shuffled.metrics == pytest.approx(in_order.metrics, rel=1e-12)


def test_forced_exclusion_without_shared_paths_is_an_error():
    vectors, labels, paths = float_problem()
    other = embedding_set(vectors, labels, [p + ".other" for p in paths])
    with pytest.raises(InputError, match="no shared paths"):
        evaluate_sets(embedding_set(vectors, labels, paths), other, exclude_self=True)


def test_dimension_mismatch_names_both_files():
    vectors, labels, paths = float_problem()
    query = embedding_set(vectors[:, :4], labels, paths)
    with pytest.raises(InputError, match="4-d embeddings but the database set holds 8-d"):
        evaluate_sets(query, embedding_set(vectors, labels, paths))


@pytest.mark.parametrize("side", ["query", "database"])
def test_no_labels_is_an_error(side):
    vectors, labels, paths = float_problem()
    unlabelled = embedding_set(vectors, np.full(90, -1), paths)
    labelled = embedding_set(vectors, labels, paths)
    sets = (unlabelled, labelled) if side == "query" else (labelled, unlabelled)
    with pytest.raises(DataError, match="every label is -1"):
        evaluate_sets(*sets)


def test_json_object_is_exactly_the_documented_one(tmp_path):
    vectors, labels, paths = float_problem()
    path = write_embeddings(tmp_path / "db.h5", vectors, labels, paths,
                            {"role": "teacher", "resolution": 448, "dataset": "toy"})
    result = evaluate_sets(read_embeddings(path), ks=(1, 10))
    assert isinstance(result, EvaluationResult)
    obj = json.loads(json.dumps(result.to_json()))
    assert list(obj) == ["metrics", "num_queries", "num_database", "queries_without_positive",
                         "self_excluded", "query", "database", "space"]
    assert list(obj["metrics"]) == ["recall@1", "recall@10", "map", "map_trapezoid", "map@r"]
    assert obj["query"]["resolution"] == 448 and obj["query"]["format"] == "raml-embeddings"
    assert obj["num_queries"] == 90 and obj["self_excluded"] is True
    spread = space_spread(read_embeddings(path).embeddings)
    assert obj["space"] == pytest.approx({"query_mean_cosine": spread.mean_cosine,
                                          "database_mean_cosine": spread.mean_cosine,
                                          "database_nn_cosine": spread.nn_cosine})
