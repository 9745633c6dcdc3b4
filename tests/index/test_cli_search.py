"""`raml index` and `raml search` through the real command line, on tiny real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from raml_cli.store import read_embeddings

from ..cli_helpers import cli_fails as _fails
from ..cli_helpers import cli_ok as _ok
from ..embed.conftest import make_images

ROOT = Path(__file__).resolve().parents[2]


def _setup(tmp_path, models):
    db_dir, q_dir = tmp_path / "db", tmp_path / "q"
    make_images(db_dir, classes=("001.a", "002.b", "003.c"), per_class=4, seed=0)
    make_images(q_dir, classes=("001.a", "002.b"), per_class=1, seed=5)
    _ok(["embed", models["teacher"], "--images", db_dir, "-o", tmp_path / "db.h5", "-q",
         "--device", "cpu"])
    _ok(["index", tmp_path / "db.h5", "-o", tmp_path / "db.index", "--kind", "flat", "-q"])
    return db_dir, q_dir


def test_search_returns_the_brute_force_ranking(tmp_path, models) -> None:
    db_dir, q_dir = _setup(tmp_path, models)
    out = _ok(["search", models["student"], "--index", tmp_path / "db.index", "--images",
               q_dir, "-k", "5", "--json", "--device", "cpu", "--sheet",
               tmp_path / "sheet.png"])
    found = json.loads(out.stdout)
    _ok(["embed", models["student"], "--images", q_dir, "-o", tmp_path / "q.h5", "-q",
         "--device", "cpu"])
    q, db = read_embeddings(tmp_path / "q.h5"), read_embeddings(tmp_path / "db.h5")
    scores = q.embeddings @ db.embeddings.T
    assert found["k"] == 5 and len(found["queries"]) == q.num
    assert found["encode_ms_per_query"] > 0 and found["search_ms_per_query"] >= 0
    for i, query in enumerate(found["queries"]):
        order = np.argsort(-scores[i], kind="stable")[:5]
        assert query["path"] == q.paths[i] and query["label"] == q.labels[i]
        assert [r["path"] for r in query["results"]] == [db.paths[j] for j in order]
        assert [r["rank"] for r in query["results"]] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([r["score"] for r in query["results"]],
                                   scores[i, order], atol=1e-5)
        assert [r["label"] for r in query["results"]] == db.labels[order].tolist()
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width > 6 * 96 and sheet.height > 2 * 96
    # Precomputed query embeddings: the same answer, no model.
    again = json.loads(_ok(["search", "--queries", tmp_path / "q.h5", "--index",
                            tmp_path / "db.index", "-k", "5", "--json"]).stdout)
    assert again["encode_ms_per_query"] is None
    assert [[r["path"] for r in qr["results"]] for qr in again["queries"]] == \
        [[r["path"] for r in qr["results"]] for qr in found["queries"]]
    # A table for people: rank, score, path.
    table = _ok(["search", models["teacher"], "--index", tmp_path / "db.index",
                 q_dir / "001.a" / "img0.jpg", "-k", "3", "--device", "cpu"]).stdout
    assert "rank" in table and "001.a/img" in table


def test_a_student_of_another_teacher_is_refused_unless_forced(tmp_path, models) -> None:
    _, q_dir = _setup(tmp_path, models)
    args = ["search", models["stranger"], "--index", tmp_path / "db.index", "--images", q_dir,
            "--device", "cpu", "--json"]
    _fails(args, "different embedding spaces")
    forced = _ok(args + ["--force"])
    assert json.loads(forced.stdout)["warnings"]


def test_bad_inputs_get_a_clear_message(tmp_path, models) -> None:
    _, q_dir = _setup(tmp_path, models)
    index = tmp_path / "db.index"
    _fails(["search", models["student"], "--index", tmp_path / "none.index", "--images",
            q_dir], "does not exist")
    _fails(["search", models["wide"], "--index", index, "--images", q_dir], "8-d")
    corrupt = tmp_path / "corrupt.index"
    corrupt.write_bytes(b"\x00" * 300)
    _fails(["search", models["student"], "--index", corrupt, "--images", q_dir],
           "not a raml index file")
    (tmp_path / "empty").mkdir()
    _fails(["search", models["student"], "--index", index, "--images", tmp_path / "empty"],
           "No images")
    _fails(["search", models["student"], "--index", index], "Give query images")
    _fails(["search", "--queries", tmp_path / "db.h5", "--index", index, "--ef", "20"],
           "--ef applies to hnsw")
    _fails(["index", tmp_path / "db.h5", "-o", tmp_path / "x.index", "--memory", "lots"],
           "--memory takes a size")
    _fails(["index", tmp_path / "missing.h5", "-o", tmp_path / "x.index"], "does not exist")


def test_raml_index_runs_as_a_program(synthetic_db, tmp_path) -> None:
    db, _ = synthetic_db
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "raml_cli", "index", str(db), "-o",
                           str(tmp_path / "db.index"), "--json"], env=env, text=True,
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["kind"] == "hnsw" and out["rows"] == 3000 and "under 10,000" in out["reason"]
    assert out["size_bytes"] == (tmp_path / "db.index").stat().st_size
    assert 0.9 <= out["self_recall@10"] <= 1.0 and out["build_seconds"] > 0
