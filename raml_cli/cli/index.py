"""``raml index``: build a faiss index over an embeddings file, for `raml search`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import JsonOpt, QuietOpt, SeedOpt

EXAMPLES = """
Examples:

    raml index db.h5 -o db.index

    raml index db.h5 -o db.index --kind ivfpq --memory 2GB --json
"""


def command(
    database: Annotated[Path, typer.Argument(help="The database's embeddings file (.h5), "
                                             "written by `raml embed`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The index file to write "
                                         "(.index); written atomically.")],
    kind: Annotated[str, typer.Option(
        "--kind", help="auto, flat (exact), hnsw (graph), ivf (IVF-Flat) or ivfpq (IVF with "
        "product-quantised codes). auto picks by size and --memory and says why.")] = "auto",
    memory: Annotated[str, typer.Option(
        "--memory", help="Memory budget of the index, e.g. 2GB, 512MB, 4GiB.")] = "4GB",
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Build a search index over an embeddings file (rows streamed, memory bounded).

    The file keeps the database's paths, labels and attributes (which model encoded it) so
    that `raml search` answers with image paths and checks the query model. The index
    scores itself: recall@10 against exact search for 1,000 seeded database rows used as
    queries, at the search parameters it tunes and stores.
    """
    from raml_cli.index import build_index
    from raml_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    result = build_index(database, output, kind=kind, memory=memory, seed=seed,
                         reporter=reporter)
    if json_output:
        from raml_cli.cli.render import print_json

        print_json(result.as_dict())
        return
    from raml_cli.cli.render import print_table
    from raml_cli.index.choose import human_bytes

    out = result.as_dict()
    params = ", ".join(f"{k}={v}" for k, v in {**out["parameters"],
                                               **out["search_params"]}.items()) or "-"
    print_table(f"index {result.output}", ["", "value"], [
        ["kind", f"{out['kind']} ({out['factory']})"], ["why", out["reason"]],
        ["parameters", params], ["rows x dim", f"{out['rows']:,} x {out['dim']}"],
        ["size on disk", human_bytes(out["size_bytes"])],
        ["memory budget", human_bytes(out["memory_budget_bytes"])],
        ["build time", f"{out['build_seconds']:.1f} s"],
        [f"self recall@10 ({out['quality_queries']} rows)", f"{out['self_recall@10']:.4f}"]])
