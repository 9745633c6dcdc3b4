"""``raml evaluate``: retrieval metrics of query embeddings against database embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from raml_cli.cli.options import DeviceOpt, JsonOpt, QuietOpt, parse_int_list

if TYPE_CHECKING:
    from raml_cli.evaluate import EvaluationResult
    from raml_cli.progress import Reporter

EXAMPLES = """
Examples (asymmetric: student queries vs teacher database; symmetric: one file against
itself; SOP cut-offs as JSON):

    raml evaluate queries.h5 db.h5

    raml evaluate db.h5

    raml evaluate sop_queries.h5 sop_db.h5 --k 1,10,100,1000 --json > metrics.json

    raml evaluate sop_queries.h5 sop_db.h5 --device cuda
"""

def command(
    query: Annotated[Path, typer.Argument(
        help="Query embeddings (.h5 from `raml embed`), e.g. the student at a small "
        "resolution.", show_default=False)],
    database: Annotated[Path | None, typer.Argument(
        help="Database embeddings (.h5), e.g. the teacher at a large resolution. Left out: "
        "QUERY is searched against itself (symmetric), each image excluded from its own "
        "ranking.", show_default=False)] = None,
    k: Annotated[str, typer.Option(
        "--k", help="Recall cut-offs, comma-separated (SOP: 1,10,100,1000).")] = "1,2,4,8",
    exclude_self: Annotated[bool | None, typer.Option(
        "--exclude-self/--no-exclude-self",
        help="Remove each query's own image from its ranking. Default: on when both files "
        "hold the same paths in the same order (or with one file), else off.",
        show_default=False)] = None,
    device: DeviceOpt = "auto",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure retrieval: recall@K, mAP (plain and trapezoid) and MAP@R, exactly.

    Every query ranks the whole database by inner product (ties: lower database row
    first); a positive is a database item of the query's class. Queries with no positive
    are left out of the averages and counted. Exact at any size, in bounded memory.
    --device: the scores are computed on a GPU (torch) or on the CPU (NumPy).
    Definitions: docs/evaluate.md.
    """
    from raml_cli.evaluate import evaluate_sets, score_engine
    from raml_cli.progress import Reporter
    from raml_cli.store import read_embeddings

    ks = parse_int_list(k, "--k", 1, "1,2,4,8 (CUB, Cars) or --k 1,10,100,1000 (SOP)")
    product, score_device = score_engine(device)
    reporter = Reporter(quiet=quiet)
    query_set = read_embeddings(query)
    database_set = read_embeddings(database) if database is not None else None
    for embeddings in (query_set, database_set):
        if embeddings is not None and embeddings.renormalized:
            reporter.warn(f"{embeddings.renormalized} of {embeddings.num} rows of "
                          f"{embeddings.source} were not unit length and were re-normalised.")
    result = evaluate_sets(query_set, database_set, ks=ks, exclude_self=exclude_self,
                           reporter=reporter, product=product, device=score_device)
    _warn_if_collapsed(result, query, database, reporter)
    if json_output:
        from raml_cli.cli.render import print_json

        print_json(result.to_json())
        return
    _print_result(result, query, database)


def _print_result(result: EvaluationResult, query: Path, database: Path | None) -> None:
    from raml_cli.cli.render import percent, print_table

    rows = [(key, percent(value)) for key, value in result.metrics.items()]
    left_out = result.queries_without_positive
    caption = (f"{result.num_queries - left_out} queries evaluated"
               + (f" ({left_out} without a positive left out)" if left_out else "")
               + f", {result.num_database} database items, self "
               + ("excluded" if result.self_excluded else "not excluded"))
    title = f"raml evaluate {query}" + (f" {database}" if database is not None else "")
    caption += ". map_trapezoid is the paper's mAP; definitions: docs/evaluate.md"
    print_table(title, ("metric", "%"), rows, caption=caption)
    if result.query_space is not None and result.database_space is not None:
        print_table("spread of the space (cosines; above 0.9 mean = collapsed)",
                    ("measure", "cosine"),
                    [("query mean pairwise", f"{result.query_space.mean_cosine:.4f}"),
                     ("database mean pairwise", f"{result.database_space.mean_cosine:.4f}"),
                     ("database nearest neighbour", f"{result.database_space.nn_cosine:.4f}")],
                    caption="seeded sample of up to 2,000 rows; definitions: docs/evaluate.md")


def _warn_if_collapsed(result: EvaluationResult, query: Path, database: Path | None,
                       reporter: Reporter) -> None:
    from raml_cli.evaluate.space import collapse_warning

    if database is None:
        sides = [(f"the space of {query}", result.database_space)]
    else:
        sides = [(f"the query space ({query})", result.query_space),
                 (f"the database space ({database})", result.database_space)]
    for name, spread in sides:
        if spread is not None and spread.collapsed:
            reporter.warn(collapse_warning(name, spread))

