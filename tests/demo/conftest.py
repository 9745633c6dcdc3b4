"""The demo's tiny settings and its table check, shared by the engine and CLI tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from raml_cli.demo import ROW_NAMES, DemoConfig

TINY_TEACHER = {"epochs": 1, "dim": 16, "images_per_epoch": 16, "pool_size": 32,
                "batch_size": 8, "negatives": 1}
TINY_STUDENT = {"epochs": 1, "augs": 2, "batch_size": 4, "images_per_epoch": 8}
TINY_TOY = {"num_classes": 8, "images_per_class": 4, "min_side": 40, "max_side": 60}
KEYS = {"name", "query_res", "database_res", "recall@1", "recall@4", "map", "query_gmacs",
        "query_mean_cosine"}


def _tiny(out: Path, dataset: Path | None) -> DemoConfig:
    return DemoConfig(out=out, query_res=16, database_res=32, device="cpu",
                      dataset=None if dataset is None else str(dataset),
                      teacher=TINY_TEACHER, student=TINY_STUDENT, workers=0, threads=1)


def _check_table(rows: list[dict], query_res: int, database_res: int) -> None:
    assert [r["name"] for r in rows] == list(ROW_NAMES)
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        assert set(row) == KEYS
        for key in ("recall@1", "recall@4", "map"):
            assert 0.0 <= row[key] <= 1.0
        assert row["recall@4"] >= row["recall@1"]
        assert row["query_gmacs"] > 0
    assert by_name["teacher_high_sym"]["query_res"] == database_res
    for name in ("teacher_low_sym", "naive_asym", "raml_asym", "student_low_sym"):
        assert by_name[name]["query_res"] == query_res
    assert by_name["naive_asym"]["database_res"] == by_name["raml_asym"]["database_res"] \
        == database_res
    assert by_name["student_low_sym"]["database_res"] == query_res
    # The query side costs about (r/R)^2 of the database side (convolutions scale with pixels).
    ratio = by_name["raml_asym"]["query_gmacs"] / by_name["teacher_high_sym"]["query_gmacs"]
    assert ratio == pytest.approx((query_res / database_res) ** 2, rel=0.35)
    assert by_name["raml_asym"]["query_gmacs"] == by_name["teacher_low_sym"]["query_gmacs"]
    # The architecture-asymmetric row: a lighter network's queries at R.
    arch = by_name["arch_asym"]
    assert arch["query_res"] == arch["database_res"] == database_res
    assert arch["query_gmacs"] < by_name["teacher_high_sym"]["query_gmacs"]


@pytest.fixture
def tiny() -> SimpleNamespace:
    """``teacher``, ``student``, ``toy`` options; ``config(out, dataset)``; ``check_table``."""
    return SimpleNamespace(teacher=TINY_TEACHER, student=TINY_STUDENT, toy=TINY_TOY,
                           config=_tiny, check_table=_check_table)
