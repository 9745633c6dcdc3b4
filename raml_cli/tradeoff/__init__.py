"""``raml tradeoff``: query quality against query cost, resolution against architecture
asymmetry (:mod:`raml_cli.tradeoff.engine`), and its picture (:mod:`raml_cli.tradeoff.plot`)."""

from raml_cli.tradeoff.engine import TradeoffConfig, plan_cells, run_tradeoff

__all__ = ["TradeoffConfig", "plan_cells", "run_tradeoff"]
