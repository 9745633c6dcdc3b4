"""``raml info``: what a model file holds, and what a query costs at each resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import (
    CompileOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    parse_float_list,
    parse_int_list,
)

EXAMPLES = """
Examples:

    raml info teacher.safetensors

    raml info student.safetensors --res 112,224,448 --batch 1,32 --json

    raml info student.safetensors --res 112 --runtime torch,onnxruntime

    raml info teacher.safetensors --no-latency

    raml info student.safetensors --res 224 --scales 1,0.7071,0.5
"""

#: Runtimes ``--runtime`` can time.
RUNTIMES = ("torch", "onnxruntime")
#: The largest batch ``--batch`` accepts (a pass of 1024 images at 448 px is ~40 GB).
MAX_BATCH = 1024


def command(
    model: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    res: Annotated[str | None, typer.Option(
        "--res", help="Comma-separated resolutions to cost, e.g. 112,224,448. Default: "
        "112, 224, 448 and the model's own.")] = None,
    batch: Annotated[str, typer.Option(
        "--batch", help="Comma-separated batch sizes to time, e.g. 1,32: batch 1 is the "
        "latency of one query, larger batches the throughput.")] = "1",
    runtime: Annotated[str, typer.Option(
        "--runtime", help="Comma-separated runtimes to time: torch, onnxruntime (needs the "
        "raml[onnx] extra; CPU).")] = "torch",
    scales: Annotated[str | None, typer.Option(
        "--scales", help="Also cost a multi-scale query (as `raml embed --scales`), e.g. "
        "1,0.7071,0.5: one forward pass per scale of each resolution.")] = None,
    latency: Annotated[bool, typer.Option(
        "--latency/--no-latency", help="Time the forward passes (median of --repeats) and "
        "the device's bare matrix product.")] = True,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes per "
                                         "resolution and batch size.")] = 5,
    compile: CompileOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a model file's metadata and its query cost: MACs per image and measured time
    per resolution and batch size (the speed side of the paper's trade-off).

    MACs count the multiply-accumulates of convolutions and linear layers of one image.
    Times are medians of --repeats passes on --device of the network as raml runs it
    (BatchNorm folded into the convolutions, the device's memory layout; bf16 on CUDA).
    GFLOP/s (2 x MACs x batch / time) are compared with the device's bare matrix product
    (2048^3, float32 on the CPU, bf16 on CUDA), measured in the same run.
    """
    import torch

    from raml_cli.devices import resolve_device
    from raml_cli.embed.engine import check_scales
    from raml_cli.errors import InputError
    from raml_cli.model.cost import bare_rate, multiscale_macs, profile
    from raml_cli.model.files import load_model
    from raml_cli.model.inference import prepare_for_inference
    from raml_cli.model.limits import check_resolution_range
    from raml_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    target = resolve_device(device)
    batches = parse_int_list(batch, "--batch", 1, "1,32")
    if max(batches) > MAX_BATCH:
        raise InputError(f"--batch: at most {MAX_BATCH} images per pass, got {max(batches)}.")
    runtimes = [part.strip().lower() for part in runtime.split(",")]
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown or not runtimes:
        raise InputError(f"--runtime takes a comma-separated list of {', '.join(RUNTIMES)}; "
                         f"got {runtime!r}.")
    if "onnxruntime" in runtimes and target.type != "cpu":
        raise InputError(f"--runtime onnxruntime times the CPU; --device is {target}. Use "
                         "--device cpu with it.")
    network, info = load_model(model, target)
    resolutions = (parse_int_list(res, "--res", 8, "112,224,448") if res
                   else sorted({112, 224, 448, info.resolution}))
    for value in resolutions:
        check_resolution_range(value)
    scale_list = parse_float_list(scales, "--scales", "1,0.7071,0.5") if scales else None
    if scale_list is not None:
        for value in resolutions:
            check_scales(scale_list, value)
    timers = {}
    if "onnxruntime" in runtimes and latency:
        from raml_cli.export import onnxruntime_latency_ms
        from raml_cli.export.runtime import require_exporter, require_onnxruntime

        require_exporter("raml info --runtime onnxruntime")  # before any timing starts
        require_onnxruntime("raml info --runtime onnxruntime")
        timers["onnxruntime"] = lambda r, b: onnxruntime_latency_ms(
            network, r, b, repeats=repeats, threads=torch.get_num_threads())
    prepared = prepare_for_inference(network, target, compile=compile)
    reporter.log(f"costing {info.architecture} at {', '.join(map(str, resolutions))} px on "
                 f"{target}")
    bare = bare_rate(target) if latency else None
    rows = profile(network, resolutions, target, repeats=repeats, measure_latency=latency,
                   batches=tuple(batches), bare_gflops=bare, timers=timers,
                   prepared=prepared, torch_runtime="torch" in runtimes)
    if scale_list is not None:
        for row in rows:
            macs = multiscale_macs(network, int(row["resolution"]), scale_list)
            row.update({"scales": scale_list, "multiscale_macs": macs,
                        "multiscale_gmacs": macs / 1e9})
    plan = prepared.inference
    if json_output:
        from raml_cli.cli.render import print_json

        out = info.as_dict()
        out["device"] = str(target)
        out["inference"] = plan.as_dict()
        out["bare_gflops"] = bare
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
    columns = ["res", "GMACs", "rel."]
    if scale_list is not None:
        columns.append(f"GMACs, scales {','.join(f'{v:g}' for v in scale_list)}")
    if latency:
        columns += ["runtime", "batch", "ms", "img/s", "GFLOP/s", "of bare"]
    table = []
    for r in rows:
        head = [f"{r['resolution']} px", f"{r['gmacs']:.3g}", f"{r['relative_macs']:.3f}",
                *([f"{r['multiscale_gmacs']:.3g}"] if scale_list is not None else [])]
        if not latency:
            table.append(head)
        for i, t in enumerate(r["timings"]):
            table.append((head if i == 0 else [""] * len(head)) + [
                t["runtime"], str(t["batch"]), f"{t['ms']:.1f}", f"{t['images_per_s']:.1f}",
                f"{t['gflops']:.1f}", f"{100 * t['fraction_of_bare']:.0f}%"])
    folded = f"{plan.folded} BatchNorm folded" if plan.folded else (plan.note or
                                                                    "no BatchNorm to fold")
    layout = "channels-last" if plan.channels_last else "NCHW"
    pointwise = f"; {plan.pointwise_gemm} 1x1 conv as GEMM" if plan.pointwise_gemm else ""
    if plan.packed_convs:
        pointwise += f"; {plan.packed_convs} conv packed for oneDNN"
    caption = f"{folded}; {layout}{pointwise}{'; compiled' if plan.compiled else ''}"
    if bare is not None:
        caption += (f"; bare matrix product on {target}: {bare:.1f} GFLOP/s. ms: median per "
                    "pass; GMACs per image")
    print_table(f"Query cost on {target}", columns, table, caption=caption)
