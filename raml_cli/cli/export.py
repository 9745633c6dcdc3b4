"""``raml export``: a model file to ONNX, checked with onnxruntime before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import JsonOpt, QuietOpt

EXAMPLES = """
Examples:

    raml export student.safetensors -o student.onnx

    raml export student.safetensors -o student.onnx --res 112 --dynamic-batch

    raml export student.safetensors -o student-uint8.onnx --with-preprocessing --json
"""


def command(
    model: Annotated[Path, typer.Argument(help="A model file written by `raml train-teacher`, "
                                          "`raml distill` or `raml import` (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The ONNX file to write "
                                         "(.onnx); written atomically, an existing file is "
                                         "replaced.")],
    res: Annotated[int | None, typer.Option(
        "--res", min=8, help="The input resolution in pixels (height = width). Default: the "
        "model's training resolution.")] = None,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="A symbolic batch dimension (any batch size); else the graph "
        "takes one image per run.")] = False,
    with_preprocessing: Annotated[bool, typer.Option(
        "--with-preprocessing", help="The graph takes uint8 RGB [B, res, res, 3] and does "
        "/255, mean/std and the layout change itself; else it takes float32 [B, 3, res, res] "
        "already normalised. Resizing and cropping stay the caller's.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="onnxruntime threads for the check. Default: torch's.")
    ] = None,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Export a model's embedding network to ONNX (input `images` -> output `embeddings`,
    float32 unit rows [B, D]), with the model's identity, resolution and normalisation in
    the file's metadata.

    The export is checked before it lands: onnxruntime runs the written file on random
    inputs and its rows must equal raml's own within 1e-4, else nothing is written. The
    caller resizes the shorter side to round(res * 8 / 7) (bilinear, antialiased) and
    centre-crops res x res, as raml's evaluation does. Needs the raml[onnx] extra.
    `raml search MODEL.onnx` searches with the file.
    """
    from raml_cli.export import export_model
    from raml_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    result = export_model(model, output, res=res, dynamic_batch=dynamic_batch,
                          with_preprocessing=with_preprocessing, threads=threads,
                          reporter=reporter)
    if json_output:
        from raml_cli.cli.render import print_json

        print_json(result.as_dict())
        return
    _render(result)


def _render(result) -> None:
    from rich.markup import escape

    from raml_cli.cli.render import print_table

    info = result.info
    rows = [
        ["file", str(result.output)],
        ["size", f"{info.size_bytes / 1e6:.1f} MB"],
        ["input", f"{info.input_name} {info.input_format} {_shape(info.input_shape)}"],
        ["output", f"{info.output_name} float32 {_shape(info.output_shape)}"],
        ["opset", info.opset],
        ["check", f"max |onnxruntime - torch| = {result.max_abs_difference:.2g} "
                  f"(<= {result.tolerance:g}; batches "
                  f"{', '.join(map(str, result.check_batches))})"],
    ]
    skip = {"format", "format_version", "input_format", "input_name", "output_name"}
    rows += [[f"metadata: {key}", value if value != "" else "-"]
             for key, value in info.metadata.items() if key not in skip]
    print_table(f"raml export: {escape(str(result.model))} -> {escape(str(result.output))}",
                ["", "value"], [[escape(str(cell)) for cell in row] for row in rows])


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
