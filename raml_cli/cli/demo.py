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

    raml demo --arch tf_efficientnet_lite0 --init-weights efficientnet-lite0.pth \\
        --database-res 96 --query-res 32 --out raml-demo-lite0
"""


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every artifact (toy "
                                      "data, models, embeddings, demo.json); a rerun reuses "
                                      "the steps already done there.")] = Path("raml-demo"),
    seed: SeedOpt = 0,
    query_res: Annotated[int, typer.Option("--query-res", min=8, help="The query (student) "
                                           "resolution.")] = 40,
    database_res: Annotated[int, typer.Option("--database-res", min=8, help="The database "
                                              "(teacher) resolution.")] = 128,
    arch: Annotated[str | None, typer.Option("--arch", help="Backbone of teacher and "
                                             "student (default: test_resnet, or "
                                             "tf_efficientnet_lite0 with --init-weights).")
                    ] = None,
    init_weights: Annotated[Path | None, typer.Option(
        "--init-weights", help="Start the teacher from this weights file (e.g. ImageNet "
        "weights; safetensors or a PyTorch state dict) instead of random weights; the "
        "teacher then trains with the train-teacher defaults (lr 1e-4, margin 0.7) for 3 "
        "epochs, the student for 2 at lr 1e-3.")] = None,
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
    the large resolution); OUT/tradeoff.png draws R@1 against query cost. About 10 minutes
    on a 2-core CPU; no network. With --init-weights the teacher starts from a pretrained
    backbone.
    """
    from raml_cli.cli.render import percent, print_json, print_table
    from raml_cli.demo import ROW_TITLES, DemoConfig, run_demo
    from raml_cli.progress import Reporter

    config = DemoConfig(out=out, seed=seed, query_res=query_res, database_res=database_res,
                        arch=arch, init_weights=init_weights, device=device)
    result = run_demo(config, Reporter(quiet=quiet))
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
    backbone = config.teacher_options()["arch"]
    print_table(f"raml demo: toy dataset, test split (zero-shot classes), {backbone}",
                ["", "query -> database px", "R@1", "R@4", "mAP", "query GMACs"], rows,
                caption=caption)

