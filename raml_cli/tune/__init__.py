"""Hyper-parameter search over a training (``raml tune``): optuna, resumable in SQLite."""

from raml_cli.tune.search import TuneConfig, TuneResult, tune
from raml_cli.tune.space import Parameter, default_space, load_space

__all__ = ["Parameter", "TuneConfig", "TuneResult", "default_space", "load_space", "tune"]
