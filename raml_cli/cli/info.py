"""``raml info``: what a model file holds, and what a query costs at each resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import DeviceOpt, JsonOpt, QuietOpt, parse_float_list, parse_int_list

EXAMPLES = """
Examples:

    raml info teacher.safetensors

    raml info student.safetensors --res 112,224,448 --json

    raml info teacher.safetensors --no-latency

    raml info student.safetensors --res 224 --scales 1,0.7071,0.5
"""


def command(
    model: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    res: Annotated[str | None, typer.Option(
        "--res", help="Comma-separated resolutions to cost, e.g. 112,224,448. Default: "
        "112, 224, 448 and the model's own.")] = None,
    scales: Annotated[str | None, typer.Option(
        "--scales", help="Also cost a multi-scale query (as `raml embed --scales`), e.g. "
        "1,0.7071,0.5: one forward pass per scale of each resolution.")] = None,
    latency: Annotated[bool, typer.Option(
        "--latency/--no-latency", help="Also time a batch-1 forward pass per resolution "
        "(median of --repeats).")] = True,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes per "
                                         "resolution.")] = 5,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a model file's metadata and its query cost: MACs per image and measured latency
    per resolution (the speed side of the paper's trade-off).

    MACs count the multiply-accumulates of convolutions and linear layers of one image;
    latency is the median wall time of one image on --device (channels-last; bf16 on CUDA).
    """
    from raml_cli.devices import resolve_device
    from raml_cli.embed.engine import check_scales
    from raml_cli.model.cost import multiscale_macs, profile
    from raml_cli.model.files import load_model
    from raml_cli.model.limits import check_resolution_range
    from raml_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    target = resolve_device(device)
    network, info = load_model(model, target)
    resolutions = (parse_int_list(res, "--res", 8, "112,224,448") if res
                   else sorted({112, 224, 448, info.resolution}))
    for value in resolutions:
        check_resolution_range(value)
    scale_list = parse_float_list(scales, "--scales", "1,0.7071,0.5") if scales else None
    if scale_list is not None:
        for value in resolutions:
            check_scales(scale_list, value)
    reporter.log(f"costing {info.architecture} at {', '.join(map(str, resolutions))} px on "
                 f"{target}")
    rows = profile(network, resolutions, target, repeats=repeats, measure_latency=latency)
    if scale_list is not None:
        for row in rows:
            macs = multiscale_macs(network, int(row["resolution"]), scale_list)
            row.update({"scales": scale_list, "multiscale_macs": macs,
                        "multiscale_gmacs": macs / 1e9})
    if json_output:
        from raml_cli.cli.render import print_json

        out = info.as_dict()
        out["device"] = str(target)
        out["cost"] = rows
        print_json(out)
        return
    from raml_cli.cli.render import print_table

    teacher = f"\nteacher_sha256: {info.teacher_sha256}" if info.teacher_sha256 else ""
    print_table(
        f"{model}", ["field", "value"],
        [["role", info.role], ["architecture", info.architecture],
         ["pooling / whitening", f"{info.pooling} / {info.whitening or 'none'}"],
         ["embedding size", info.embedding_dim], ["trained at", f"{info.resolution} px"],
         ["dataset", info.dataset], ["mean / std", f"{list(info.mean)} / {list(info.std)}"],
         ["raml version", info.raml_version], ["sha256", info.sha256[:16] + "..."]],
        caption=teacher.strip() or None)
    columns = ["resolution", "GMACs / image", "relative", "latency ms"]
    if scale_list is not None:
        columns.append(f"GMACs at scales {','.join(f'{v:g}' for v in scale_list)}")
    print_table(
        f"Query cost on {target}", columns,
        [[f"{r['resolution']} px", f"{r['gmacs']:.3g}", f"{r['relative_macs']:.3f}",
          "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
          *([f"{r['multiscale_gmacs']:.3g}"] if scale_list is not None else [])]
         for r in rows])

