"""Retrieval evaluation: exact recall@K, mAP (plain and trapezoid) and MAP@R at scale.

- :mod:`~raml_cli.evaluate.neighbours`: the rank of every positive of every query in
  its full ranking of the database, in query blocks, without the full score matrix.
- :mod:`~raml_cli.evaluate.metrics`: the metric definitions, from those ranks.
- :mod:`~raml_cli.evaluate.evaluation`: :func:`evaluate_arrays`, :func:`evaluate_sets`
  and :class:`EvaluationResult` (the JSON of ``raml evaluate --json``).
- :mod:`~raml_cli.evaluate.space`: the spread of an embedding space (mean pairwise and
  nearest-neighbour cosines) and when it counts as collapsed.
"""

from raml_cli.evaluate.evaluation import (
    DEFAULT_KS,
    EvaluationResult,
    check_ks,
    evaluate_arrays,
    evaluate_sets,
    score_engine,
)
from raml_cli.evaluate.metrics import metric_keys
from raml_cli.evaluate.space import SpaceSpread, space_spread

__all__ = [
    "DEFAULT_KS",
    "EvaluationResult",
    "check_ks",
    "evaluate_arrays",
    "evaluate_sets",
    "score_engine",
    "SpaceSpread",
    "metric_keys",
    "space_spread",
]
