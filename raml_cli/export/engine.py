"""``raml export``: a model file to an ONNX file, checked with onnxruntime before it lands.

The network is converted (:func:`~raml_cli.export.convert.to_onnx`), its metadata attached
(:mod:`raml_cli.export.file`), and the bytes written to a temporary name beside the
output. onnxruntime then runs that file on seeded random inputs (batch 1, and a batch of 3
when the batch is dynamic) next to raml's own torch network; only when every row agrees
within :data:`~raml_cli.export.convert.TOLERANCE` is the file renamed into place. An
existing output is replaced (as ``raml embed`` and ``raml index`` do), never the model it
is exported from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_output, check_outputs_apart
from raml_cli.errors import ExportError, InputError
from raml_cli.export.convert import (
    CHECK_BATCHES_DYNAMIC,
    CHECK_BATCHES_FIXED,
    FLOAT_INPUT,
    TOLERANCE,
    UINT8_INPUT,
    example_inputs,
    graph_module,
    max_abs_difference,
    to_onnx,
)
from raml_cli.export.file import SUFFIX, onnx_metadata, read_onnx_info, serialize
from raml_cli.export.runtime import create_session, require_exporter, require_onnxruntime
from raml_cli.progress import NULL_REPORTER, Reporter


@dataclass
class ExportResult:
    """What :func:`export_model` wrote (``raml export --json`` prints :meth:`as_dict`).

    Attributes:
        info: the written file's :class:`~raml_cli.export.file.OnnxModelInfo`, read back.
        max_abs_difference: the largest ``|onnxruntime - torch|`` of the check.
        check_batches: the batch sizes the check ran.
        seconds: the wall time of the conversion and the check.
    """

    output: Path
    model: Path
    info: Any
    max_abs_difference: float
    tolerance: float = TOLERANCE
    check_batches: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        info = self.info.as_dict()
        return {
            "output": str(self.output), "model": str(self.model),
            "size_bytes": info["size_bytes"], "sha256": info["file_sha256"],
            "input": info["input"], "output_tensor": info["output"], "opset": info["opset"],
            "metadata": dict(self.info.metadata),
            "check": {"max_abs_difference": self.max_abs_difference,
                      "tolerance": self.tolerance, "batches": self.check_batches,
                      "runtime": "onnxruntime", "passed": True},
            "seconds": round(self.seconds, 3),
        }


def export_model(model: str | os.PathLike, output: str | os.PathLike, *,
                 res: int | None = None, dynamic_batch: bool = False,
                 with_preprocessing: bool = False, threads: int | None = None,
                 reporter: Reporter | None = None) -> ExportResult:
    """Export the model file ``model`` to the ONNX file ``output`` (checked, atomic).

    Args:
        res: the input resolution (default: the model's training resolution).
        dynamic_batch: a symbolic batch dimension; else the graph takes batch 1.
        with_preprocessing: the graph takes uint8 RGB ``[B, res, res, 3]`` and normalises
            inside; else float32 ``[B, 3, res, res]`` already normalised.
        threads: onnxruntime's threads for the check.

    Raises:
        InputError: a missing extra, a bad ``res``, an output that is not ``.onnx`` or is
            the model itself.
        FormatError: the model file is not a raml model.
        ExportError: onnxruntime's rows differ from torch's by more than 1e-4 (nothing is
            written; an existing output is left as it was).
    """
    from raml_cli.model.files import load_model
    from raml_cli.model.limits import check_resolution_range
    from raml_cli.model.resolution import check_resolution

    reporter = reporter or NULL_REPORTER
    target = Path(output)
    check_outputs_apart({"the ONNX file (-o)": target}, {"the model file": model})
    if target.suffix.lower() != SUFFIX:
        raise InputError(f"The ONNX file (-o) must end in {SUFFIX} (`raml search` tells models "
                         f"apart by it); got {target}. E.g. -o {target.with_suffix(SUFFIX)}.")
    require_exporter()
    require_onnxruntime("Checking an ONNX export")
    if res is not None:
        check_resolution_range(res)
    network, info = load_model(model, "cpu")
    res = int(res or info.resolution)
    check_resolution(network, res, info.architecture)
    input_format = UINT8_INPUT if with_preprocessing else FLOAT_INPUT
    started = time.perf_counter()
    reporter.log(f"exporting {info.architecture} ({info.role}) at {res} px to ONNX "
                 f"({input_format}, {'dynamic' if dynamic_batch else 'fixed'} batch)")
    proto = to_onnx(network, res, input_format=input_format, dynamic_batch=dynamic_batch)
    data = serialize(proto, onnx_metadata(info, res, input_format, dynamic_batch))
    del proto
    batches = list(CHECK_BATCHES_DYNAMIC if dynamic_batch else CHECK_BATCHES_FIXED)
    with atomic_output(target) as tmp:
        tmp.write_bytes(data)
        reporter.log(f"checking the file with onnxruntime against torch (batches "
                     f"{', '.join(map(str, batches))})")
        session = create_session(tmp, threads)
        difference = max_abs_difference(
            session, graph_module(network, input_format),
            [example_inputs(res, input_format, b) for b in batches])
        del session
        if not difference <= TOLERANCE:
            raise ExportError(
                f"The ONNX export of {model} does not reproduce raml's embeddings: on random "
                f"inputs onnxruntime's rows differ from torch's by up to {difference:.3g} "
                f"(allowed: {TOLERANCE:g}), so nothing was written to {target}. Try another "
                "--res or without --with-preprocessing; the .safetensors model still works "
                "with raml itself.")
    seconds = time.perf_counter() - started
    written = read_onnx_info(target)
    reporter.log(f"wrote {target} ({written.size_bytes / 1e6:.1f} MB); max |onnxruntime - "
                 f"torch| = {difference:.2g}")
    return ExportResult(target, Path(model), written, difference, TOLERANCE, batches, seconds)
