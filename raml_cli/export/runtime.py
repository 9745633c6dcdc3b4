"""The optional ONNX dependencies, imported on first use, and onnxruntime sessions.

``onnx``, ``onnxruntime`` and ``onnxscript`` (which torch's ONNX exporter needs) are the
``raml[onnx]`` extra. Nothing imports them at module level, so raml without the extra
works everywhere else, and an ONNX feature without it fails with one message naming the
extra.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from raml_cli.errors import InputError

EXTRA = "raml[onnx]"
INSTALL = f"pip install '{EXTRA}'"


def _require(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise InputError(
            f"{what} needs the Python package {name!r}, which is not installed ({err}). It "
            f"comes with the optional extra {EXTRA}: run `{INSTALL}` (or install onnx, "
            "onnxruntime and onnxscript), then try again."
        ) from err


def require_onnx(what: str = "ONNX export") -> ModuleType:
    """The ``onnx`` module, or an :class:`InputError` naming the extra."""
    return _require("onnx", what)


def require_onnxruntime(what: str = "Running an ONNX model") -> ModuleType:
    """The ``onnxruntime`` module, or an :class:`InputError` naming the extra."""
    return _require("onnxruntime", what)


def require_exporter(what: str = "ONNX export") -> None:
    """Check that everything torch's ONNX exporter imports is installed."""
    require_onnx(what)
    _require("onnxscript", what)


def onnx_available(exporter: bool = False) -> bool:
    """Whether the extra's onnx and onnxruntime import, and with ``exporter`` also
    onnxscript, which torch's exporter needs (``raml search --runtime auto`` asks)."""
    names = ("onnx", "onnxruntime") + (("onnxscript",) if exporter else ())
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def default_threads() -> int:
    """Intra-op threads when none are asked for: torch's own setting, so both runtimes use
    the same cores (``torch.set_num_threads`` governs both)."""
    import torch

    return max(1, int(torch.get_num_threads()) or (os.cpu_count() or 1))


def create_session(model: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``model`` (serialised bytes or a file path).

    ``threads``: intra-op threads (default :func:`default_threads`); one inter-op thread
    and sequential execution (a CNN is one chain of operators). All graph optimisations
    are enabled (BatchNorm folding into convolutions, operator fusion).
    """
    ort = require_onnxruntime()
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise InputError(f"The thread count must be at least 1, got {threads}.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options,
                                providers=["CPUExecutionProvider"])
