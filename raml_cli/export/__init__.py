"""ONNX: export a model file for other runtimes, and run exported files with onnxruntime.

- :mod:`~raml_cli.export.convert`: the embedding network as an ONNX graph (float or uint8
  input) and the check that onnxruntime reproduces torch's rows.
- :mod:`~raml_cli.export.file`: the ``.onnx`` file's metadata (one module reads and writes
  it): :func:`read_onnx_info`.
- :mod:`~raml_cli.export.engine`: :func:`export_model` (``raml export``).
- :mod:`~raml_cli.export.encoder`: :class:`OnnxEncoder` (batches in, unit rows out),
  :func:`encoder_for_network` (an in-memory export), :func:`onnxruntime_latency_ms`.
- :mod:`~raml_cli.export.runtime`: the optional ``raml[onnx]`` dependencies, imported on
  first use, and onnxruntime sessions.

Importing this package needs torch, not onnx: the extra is imported when it is used.
"""

from raml_cli.export.convert import FLOAT_INPUT, INPUT_NAME, OUTPUT_NAME, UINT8_INPUT, to_onnx
from raml_cli.export.encoder import OnnxEncoder, encoder_for_network, onnxruntime_latency_ms
from raml_cli.export.engine import ExportResult, export_model
from raml_cli.export.file import OnnxModelInfo, read_onnx_info
from raml_cli.export.runtime import INSTALL, onnx_available

__all__ = [
    "FLOAT_INPUT", "INPUT_NAME", "INSTALL", "OUTPUT_NAME", "UINT8_INPUT", "ExportResult",
    "OnnxEncoder", "OnnxModelInfo", "encoder_for_network", "export_model", "onnx_available",
    "onnxruntime_latency_ms", "read_onnx_info", "to_onnx",
]
