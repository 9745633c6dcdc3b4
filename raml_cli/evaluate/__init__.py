"""Retrieval evaluation: exact recall@K, mAP (plain and trapezoid) and MAP@R at scale.

- :mod:`~raml_cli.evaluate.neighbours`: the rank of every positive of every query in
  its full ranking of the database, in query blocks, without the full score matrix.
- :mod:`~raml_cli.evaluate.metrics`: the metric definitions, from those ranks.
- :mod:`~raml_cli.evaluate.evaluation`: :func:`evaluate_arrays`, :func:`evaluate_sets`
  and :class:`EvaluationResult` (the JSON of ``raml evaluate --json``).
"""

from raml_cli.evaluate.evaluation import (
    DEFAULT_KS,
    EvaluationResult,
    check_ks,
    evaluate_arrays,
    evaluate_sets,
)
from raml_cli.evaluate.metrics import metric_keys

__all__ = [
    "DEFAULT_KS",
    "EvaluationResult",
    "check_ks",
    "evaluate_arrays",
    "evaluate_sets",
    "metric_keys",
]
