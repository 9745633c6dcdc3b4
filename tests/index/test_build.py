import numpy as np
import pytest

from raml_cli.index import build_index, read_index_file
from raml_cli.index.build import recall_at_k, set_search_params
from raml_cli.store import write_embeddings

from .conftest import clustered


def _near(x, n, seed):
    """Unseen queries from the database's distribution: its rows, moved a little."""
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)] + 0.1 * rng.normal(size=(n, x.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _exact(queries, x, k=10):
    return np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_each_kind_finds_the_exact_neighbours_it_claims(kind, synthetic_db, tmp_path) -> None:
    db, x = synthetic_db
    # (a small budget keeps the PQ codes at 8 bytes: quick to train)
    result = build_index(db, tmp_path / f"{kind}.index", kind=kind, seed=1, memory="100kB"
                         if kind == "ivfpq" else "1GB")
    assert result.plan.kind == kind and result.info.build["quality_queries"] == 1000
    queries = _near(x, 200, seed=9)
    loaded = read_index_file(result.output)
    _, found = loaded.index.search(queries, 10)
    recall = recall_at_k(found, _exact(queries, x))
    floor = {"flat": 1.0, "hnsw": 0.9, "ivf": 0.9, "ivfpq": 0.6}[kind]
    assert recall >= floor
    assert recall >= result.self_recall - 0.08  # unseen queries score like its own sample
    if kind == "flat":
        assert result.self_recall == 1.0


def test_the_same_seed_builds_the_same_ivf(synthetic_db, tmp_path) -> None:
    db, _ = synthetic_db
    a = build_index(db, tmp_path / "a.index", kind="ivf", seed=3)
    b = build_index(db, tmp_path / "b.index", kind="ivf", seed=3)
    assert a.self_recall == b.self_recall
    assert a.info.search_params == b.info.search_params


@pytest.mark.slow
def test_ivfpq_over_50k_rows_reaches_the_recall_it_reports(tmp_path) -> None:
    x = clustered(50_000, 16, seed=4, clusters=200)
    db = write_embeddings(tmp_path / "db.h5", x, np.zeros(50_000, np.int64),
                          [f"{i}.jpg" for i in range(50_000)])
    result = build_index(db, tmp_path / "pq.index", kind="ivfpq", memory="900kB", seed=0)
    assert result.plan.params["pq_bytes"] == 8
    loaded = read_index_file(result.output)
    assert loaded.info.search_params == result.info.search_params
    set_search_params(loaded.index, loaded.info.search_params)
    queries = _near(x, 500, seed=7)
    _, found = loaded.index.search(queries, 10)
    assert recall_at_k(found, _exact(queries, x)) >= result.self_recall - 0.05
