"""`raml evaluate` on the command line: CliRunner for the cases, a real subprocess for the
entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.evaluate import evaluate_arrays, space_spread
from raml_cli.store import write_embeddings

runner = CliRunner()


def clustered(rows: int = 40, dim: int = 8, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(rows // 4), 4)
    centres = rng.standard_normal((rows // 4, dim))
    vectors = (centres[labels] + 0.9 * rng.standard_normal((rows, dim))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.float32(scale), labels


@pytest.fixture
def files(tmp_path):
    """A database file (teacher), a query file of the same images (student), and a
    query file of other images."""
    db_vectors, labels = clustered(seed=0)
    q_vectors, _ = clustered(seed=1)
    names = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    db = write_embeddings(tmp_path / "db.h5", db_vectors, labels, names,
                          {"role": "teacher", "resolution": 448})
    q = write_embeddings(tmp_path / "q.h5", q_vectors, labels, names,
                         {"role": "student", "resolution": 112})
    other = write_embeddings(tmp_path / "other.h5", q_vectors[:10], labels[:10],
                             [f"new/{i}.jpg" for i in range(10)], {"role": "student"})
    return {"db": db, "q": q, "other": other, "db_vectors": db_vectors,
            "q_vectors": q_vectors, "labels": labels}


def run(*args: object):
    return runner.invoke(app, ["evaluate", *map(str, args)])


def test_table_shows_percentages_with_two_decimals(files):
    result = run(files["q"], files["db"], "--quiet")
    assert result.exit_code == 0, result.output
    expected = evaluate_arrays(files["q_vectors"], files["labels"], files["db_vectors"],
                               files["labels"], (1, 2, 4, 8), exclude_self=True)
    for key, value in expected.items():
        assert re.search(rf"{re.escape(key)}\s+│\s+{100 * value:.2f}\s", result.stdout), key
    assert "self excluded" in result.stdout
    assert result.stderr == ""


def test_json_is_the_documented_object_and_alone_on_stdout(files):
    result = run(files["q"], files["db"], "--json", "--k", "1,10")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert list(obj) == ["metrics", "num_queries", "num_database", "queries_without_positive",
                         "self_excluded", "query", "database", "space"]
    expected = evaluate_arrays(files["q_vectors"], files["labels"], files["db_vectors"],
                               files["labels"], (1, 10), exclude_self=True)
    assert obj["metrics"] == pytest.approx(expected)
    assert obj["num_queries"] == obj["num_database"] == 40
    assert obj["queries_without_positive"] == 0 and obj["self_excluded"] is True
    assert obj["query"]["role"] == "student" and obj["database"]["resolution"] == 448


def test_json_reports_the_spread_of_both_sides(files):
    obj = json.loads(run(files["q"], files["db"], "--json").stdout)
    query, database = space_spread(files["q_vectors"]), space_spread(files["db_vectors"])
    assert obj["space"] == pytest.approx({"query_mean_cosine": query.mean_cosine,
                                          "database_mean_cosine": database.mean_cosine,
                                          "database_nn_cosine": database.nn_cosine})
    assert obj["space"]["query_mean_cosine"] != obj["space"]["database_mean_cosine"]
    symmetric = json.loads(run(files["db"], "--json").stdout)["space"]
    assert symmetric["query_mean_cosine"] == symmetric["database_mean_cosine"]
    assert symmetric["database_nn_cosine"] == pytest.approx(database.nn_cosine)


def test_table_shows_the_spread(files):
    result = run(files["q"], files["db"], "--quiet")
    database = space_spread(files["db_vectors"])
    assert re.search(rf"database nearest neighbour\s+│\s+{database.nn_cosine:.4f}\s",
                     result.stdout)
    assert re.search(rf"database mean pairwise\s+│\s+{database.mean_cosine:.4f}\s",
                     result.stdout)
    assert "query mean pairwise" in result.stdout


def cone_file(tmp_path, name, like):
    """``like``'s vectors squeezed into a narrow cone around one axis (mean cosine > 0.9)."""
    axis = np.zeros(like["db_vectors"].shape[1], dtype=np.float32)
    axis[0] = 1.0
    squeezed = axis + 0.1 * like["db_vectors"]
    squeezed /= np.linalg.norm(squeezed, axis=1, keepdims=True)
    names = [f"c{label}/{i}.jpg" for i, label in enumerate(like["labels"])]
    return write_embeddings(tmp_path / name, squeezed, like["labels"], names,
                            {"role": "teacher"})


def test_a_collapsed_database_is_warned_about_on_stderr(tmp_path, files):
    collapsed = cone_file(tmp_path, "cone.h5", files)
    result = run(files["q"], collapsed, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["space"]["database_mean_cosine"] > 0.9
    message = " ".join(result.stderr.split())
    assert f"the database space ({collapsed}) is collapsed" in message
    assert "narrow cone" in message and "asymmetric search will be fragile" in message
    assert "Retrain the teacher" in message and "Diagnosing a collapsed space" in message
    assert "query space" not in message  # the query side is spread out
    symmetric = run(collapsed)
    assert f"the space of {collapsed} is collapsed" in " ".join(symmetric.stderr.split())


def test_one_file_is_symmetric_and_exclusion_can_be_overridden(files):
    symmetric = json.loads(run(files["db"], "--json").stdout)
    assert symmetric["self_excluded"] is True and symmetric["num_database"] == 40
    assert symmetric["query"] == symmetric["database"]
    included = json.loads(run(files["db"], "--json", "--no-exclude-self").stdout)
    assert included["self_excluded"] is False and included["metrics"]["recall@1"] == 1.0


def test_other_images_are_not_excluded_unless_asked(files):
    default = json.loads(run(files["other"], files["db"], "--json").stdout)
    assert default["self_excluded"] is False and default["num_queries"] == 10
    forced = run(files["other"], files["db"], "--exclude-self")
    assert forced.exit_code == 2 and "no shared paths" in forced.stderr


def test_non_unit_rows_are_renormalised_with_a_warning(tmp_path, files):
    vectors, labels = clustered(seed=0, scale=2.0)
    scaled = write_embeddings(tmp_path / "scaled.h5", vectors, labels,
                              [f"{i}.jpg" for i in range(40)])
    result = run(scaled, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "40 of 40 rows" in result.stderr and "re-normalised" in result.stderr
    unit = json.loads(run(files["db"], "--json").stdout)
    assert json.loads(result.stdout)["metrics"] == pytest.approx(unit["metrics"])


def write_h5(path, **datasets):
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "raml-embeddings"
        handle.attrs["format_version"] = 1
        for name, value in datasets.items():
            kwargs = {"dtype": h5py.string_dtype("utf-8")} if name == "paths" else {}
            handle.create_dataset(name, data=value, **kwargs)
    return path


def error_cases(tmp_path, files):
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    no_paths = write_h5(tmp_path / "schema.h5", embeddings=np.eye(2, dtype=np.float32),
                        labels=np.arange(2))
    empty = write_h5(tmp_path / "empty.h5", embeddings=np.zeros((0, 8), np.float32),
                     labels=np.zeros(0, np.int64), paths=[])
    small, _ = clustered(dim=4)
    narrow = write_embeddings(tmp_path / "narrow.h5", small, files["labels"],
                              [f"{i}.jpg" for i in range(40)])
    unlabelled = write_embeddings(tmp_path / "unlabelled.h5", files["db_vectors"],
                                  np.full(40, -1), [f"{i}.jpg" for i in range(40)])
    return {
        "missing file": ([tmp_path / "nope.h5"], "does not exist"),
        "folder": ([tmp_path], "is a folder"),
        "not hdf5": ([not_h5], "not a readable HDF5 file"),
        "wrong schema": ([no_paths], "lacks the dataset(s) /paths"),
        "empty file": ([empty], "holds no embeddings (0 rows)"),
        "dimension mismatch": ([narrow, files["db"]], "4-d embeddings but"),
        "no labels": ([unlabelled], "every label is -1"),
        "no labels in database": ([files["db"], unlabelled], "every label is -1"),
        "k not an integer": ([files["db"], "--k", "1,two"], "--k takes comma-separated"),
        "k below one": ([files["db"], "--k", "0,1"], "--k takes comma-separated"),
        "k empty": ([files["db"], "--k", ""], "--k takes comma-separated"),
        "k empty item": ([files["db"], "--k", "1,,4"], "--k takes comma-separated"),
    }


@pytest.mark.parametrize("case", ["missing file", "folder", "not hdf5", "wrong schema",
                                  "empty file", "dimension mismatch", "no labels",
                                  "no labels in database", "k not an integer", "k below one",
                                  "k empty", "k empty item"])
def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path, files, case):
    args, message = error_cases(tmp_path, files)[case]
    result = run(*args, "--json")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_help_shows_an_example():
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    assert "raml evaluate queries.h5 db.h5" in result.stdout and "--exclude-self" in result.stdout


def test_as_a_subprocess(files, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "raml_cli", "evaluate", str(files["q"]),
                         str(files["db"]), "--k", "1,2", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["metrics"]["recall@2"] >= json.loads(ok.stdout)["metrics"][
        "recall@1"]
    bad = subprocess.run([sys.executable, "-m", "raml_cli", "evaluate",
                          str(tmp_path / "nope.h5")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr
