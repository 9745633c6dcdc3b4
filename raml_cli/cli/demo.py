"""``raml demo``: the paper's effect on the built-in toy dataset, in minutes, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import DeviceOpt, JsonOpt, QuietOpt, SeedOpt

EXAMPLES = """
Examples:

    raml demo

    raml demo --out raml-demo --query-res 64 --seed 1

    raml demo --json --quiet | python -m json.tool
"""


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every artifact (toy "
                                      "data, models, embeddings, demo.json); a rerun reuses "
                                      "the steps already done there.")] = Path("raml-demo"),
    seed: SeedOpt = 0,
    query_res: Annotated[int, typer.Option("--query-res", min=8, help="The query (student) "
                                           "resolution; the database side is 128 px.")] = 40,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Show the paper's effect on the toy dataset: small queries against a large database.

    Runs download toy -> train-teacher at 128 px -> distill to the query resolution ->
    embed -> evaluate, and prints R@1, R@4, mAP and the query cost for: the teacher at
    both resolutions, naive asymmetric search (teacher queries at the small resolution
    against the teacher's large-resolution database), RAML (distilled student queries
    against the same database) and architecture asymmetry (a lighter backbone distilled at
    the large resolution); OUT/tradeoff.png draws R@1 against query cost. About 7 minutes
    on a 2-core CPU; no network.
    """
    from raml_cli.cli.render import percent, print_json, print_table
    from raml_cli.demo import ROW_TITLES, DemoConfig, run_demo
    from raml_cli.progress import Reporter

    result = run_demo(DemoConfig(out=out, seed=seed, query_res=query_res, device=device),
                      Reporter(quiet=quiet))
    if json_out:
        print_json(result.to_json())
        return
    rows = [[ROW_TITLES[r["name"]], f"{r['query_res']} -> {r['database_res']}",
             percent(r["recall@1"]), percent(r["recall@4"]), percent(r["map"]),
             f"{r['query_gmacs']:.4f}"] for r in result.rows]
    raml, naive = result.row("raml_asym"), result.row("naive_asym")
    arch = result.row("arch_asym")
    low = result.row("teacher_low_sym")
    high = result.row("teacher_high_sym")
    caption = (
        f"RAML R@1 is {100 * (raml['recall@1'] - naive['recall@1']):+.2f} points over naive "
        f"asymmetric and {100 * (raml['recall@1'] - low['recall@1']):+.2f} over the teacher "
        f"at {low['query_res']} px, with queries costing "
        f"{raml['query_gmacs'] / high['query_gmacs']:.2f}x the database side. "
        f"The lighter architecture at {arch['query_res']} px: R@1 "
        f"{100 * (raml['recall@1'] - arch['recall@1']):+.2f} points for RAML, at "
        f"{arch['query_gmacs'] / raml['query_gmacs']:.2f}x RAML's query cost. "
        f"Picture: {result.output_dir / 'tradeoff.png'}. "
        f"Artifacts: {result.output_dir} ({result.seconds.get('total', 0):.0f} s)."
    )
    print_table("raml demo: toy dataset, test split (zero-shot classes)",
                ["", "query -> database px", "R@1", "R@4", "mAP", "query GMACs"], rows,
                caption=caption)

