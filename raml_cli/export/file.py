"""Exported model files (``*.onnx``): the one module that reads and writes them.

An ONNX model (opset :data:`~raml_cli.export.convert.OPSET`, one file, weights inside)
whose graph maps ``images`` to ``embeddings`` (see :mod:`raml_cli.export.convert`), with
string ``metadata_props``:

==================  ===========================================================
``format``          ``raml-onnx``
``format_version``  ``1``
``model_sha256``    sha256 of the ``.safetensors`` model file it was exported from
                    (what embeddings and index files record, so the compatibility
                    check of ``raml search`` works on the exported file too)
``architecture``    backbone name, ``pooling``, ``whitening``, ``embedding_dim``:
                    as in the model file
``mean``, ``std``   JSON lists of 3 floats: the normalisation (inside the graph for
                    ``uint8-nhwc``, the caller's for ``float32-nchw``)
``resolution``      the input's height and width (int)
``role``            ``teacher`` or ``student``
``teacher_sha256``  for a student: sha256 of its teacher's file (empty for a teacher)
``dataset``         the training dataset's name
``raml_version``    version of the package that exported it
``input_format``    ``float32-nchw`` or ``uint8-nhwc``
``input_name``      ``images``; ``output_name`` ``embeddings``
``dynamic_batch``   ``true`` (the batch dimension is symbolic) or ``false`` (batch 1)
==================  ===========================================================
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raml_cli import __version__
from raml_cli.errors import FormatError, InputError
from raml_cli.export.convert import (
    FLOAT_INPUT,
    INPUT_FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    input_shape,
    model_bytes,
)
from raml_cli.export.runtime import require_onnx
from raml_cli.model.files import ROLES, ModelInfo
from raml_cli.model.limits import MAX_EMBEDDING_DIM, MAX_RESOLUTION

FORMAT = "raml-onnx"
FORMAT_VERSION = 1
SUFFIX = ".onnx"
METADATA_KEYS = (
    "format", "format_version", "model_sha256", "architecture", "pooling", "whitening",
    "embedding_dim", "mean", "std", "resolution", "role", "teacher_sha256", "dataset",
    "raml_version", "input_format", "input_name", "output_name", "dynamic_batch",
)


@dataclass
class OnnxModelInfo:
    """The metadata of an ONNX file written by ``raml export``, parsed and checked.

    Attributes:
        path: the ``.onnx`` file; ``file_sha256`` its own digest, ``size_bytes`` its size.
        sha256: the source model file's sha256 (``model_sha256``): the identity that
            embeddings and index files record (the name matches
            :class:`~raml_cli.model.files.ModelInfo`, so the same checks apply).
        input_shape, output_shape: with ``"batch"`` for a dynamic batch dimension.
    """

    path: Path
    file_sha256: str
    size_bytes: int
    sha256: str
    architecture: str
    pooling: str
    whitening: int
    embedding_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int
    role: str
    teacher_sha256: str
    dataset: str
    raml_version: str
    input_format: str
    dynamic_batch: bool
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_shape: list[int | str] = field(default_factory=list)
    output_shape: list[int | str] = field(default_factory=list)
    opset: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path), "file_sha256": self.file_sha256,
            "size_bytes": self.size_bytes, "model_sha256": self.sha256,
            "architecture": self.architecture, "pooling": self.pooling,
            "whitening": self.whitening, "embedding_dim": self.embedding_dim,
            "mean": list(self.mean), "std": list(self.std), "resolution": self.resolution,
            "role": self.role, "teacher_sha256": self.teacher_sha256, "dataset": self.dataset,
            "raml_version": self.raml_version, "input_format": self.input_format,
            "dynamic_batch": self.dynamic_batch, "input": {"name": self.input_name,
                                                           "shape": self.input_shape},
            "output": {"name": self.output_name, "shape": self.output_shape},
            "opset": self.opset,
        }


def onnx_metadata(info: ModelInfo, res: int, input_format: str,
                  dynamic_batch: bool) -> dict[str, str]:
    """The ``metadata_props`` of a file exported from the model ``info`` describes."""
    return {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "model_sha256": info.sha256,
        "architecture": info.architecture, "pooling": info.pooling,
        "whitening": str(info.whitening), "embedding_dim": str(info.embedding_dim),
        "mean": json.dumps([float(v) for v in info.mean]),
        "std": json.dumps([float(v) for v in info.std]), "resolution": str(int(res)),
        "role": info.role, "teacher_sha256": info.teacher_sha256 or "",
        "dataset": info.dataset, "raml_version": __version__, "input_format": input_format,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "dynamic_batch": "true" if dynamic_batch else "false",
    }


def serialize(model: Any, metadata: dict[str, str]) -> bytes:
    """``model`` (an ``onnx.ModelProto``) with ``metadata`` as its ``metadata_props`` and
    a description of its input, as the bytes of one ``.onnx`` file."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "raml"
    model.producer_version = __version__
    what = ("float32 [B, 3, H, W] normalised as (pixel / 255 - mean) / std"
            if metadata["input_format"] == FLOAT_INPUT else "uint8 RGB [B, H, W, 3]")
    model.doc_string = (
        f"raml embedding network ({metadata['architecture']}, {metadata['role']}): "
        f"{INPUT_NAME} {what}, H = W = {metadata['resolution']} (resize the shorter side to "
        f"round(res * 8 / 7), bilinear, antialiased, and centre-crop res x res first) -> "
        f"{OUTPUT_NAME} float32 [B, {metadata['embedding_dim']}], unit rows.")
    return model_bytes(model)


def read_onnx_info(path: str | os.PathLike) -> OnnxModelInfo:
    """Open an ``.onnx`` file written by ``raml export`` and check its metadata and graph.

    Raises:
        InputError: the file does not exist, or the ``raml[onnx]`` extra is missing.
        FormatError: not ONNX, an ONNX file that raml did not write, an unknown
            ``format_version``, or metadata that does not fit the graph.
    """
    onnx = require_onnx("Reading an .onnx model")
    file = Path(path)
    if not file.exists():
        raise InputError(f"The ONNX model {file} does not exist. Write one with `raml export "
                         "MODEL.safetensors -o MODEL.onnx`.")
    if file.is_dir():
        raise InputError(f"{file} is a folder, not an ONNX model file.")
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InputError(f"Cannot read the ONNX model {file}: {err.strerror}.") from err
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError and friends: the bytes are not ONNX
        raise FormatError(f"{file} is not an ONNX model ({type(err).__name__}). Give an .onnx "
                          "file written by `raml export`.") from err
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    info = _parse(file, metadata, model, data)
    _check_graph(info, model)
    return info


def _parse(file: Path, metadata: dict[str, str], model: Any, data: bytes) -> OnnxModelInfo:
    if metadata.get("format") != FORMAT:
        raise FormatError(
            f"{file} is not an ONNX model written by raml: it has no `format` = {FORMAT!r} "
            "metadata, so raml cannot tell which model it holds, its normalisation or the "
            "teacher it belongs to. Export one with `raml export MODEL.safetensors -o "
            f"{file.name}`.")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise FormatError(f"{file} has format_version {metadata.get('format_version')!r}; this "
                          f"raml ({__version__}) reads version {FORMAT_VERSION}. Export it again "
                          "with this raml.")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise FormatError(f"{file} lacks the metadata key(s) {', '.join(missing)} that every "
                          "file of `raml export` has; it was edited. Export it again.")
    try:
        info = OnnxModelInfo(
            path=file, file_sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
            sha256=metadata["model_sha256"], architecture=metadata["architecture"],
            pooling=metadata["pooling"], whitening=int(metadata["whitening"]),
            embedding_dim=int(metadata["embedding_dim"]), mean=_floats3(metadata["mean"]),
            std=_floats3(metadata["std"]), resolution=int(metadata["resolution"]),
            role=metadata["role"], teacher_sha256=metadata["teacher_sha256"],
            dataset=metadata["dataset"], raml_version=metadata["raml_version"],
            input_format=metadata["input_format"],
            dynamic_batch=_boolean(metadata["dynamic_batch"]),
            input_name=metadata["input_name"], output_name=metadata["output_name"],
            opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                      default=0),
            metadata=dict(metadata))
    except (ValueError, TypeError) as err:
        raise FormatError(f"{file} has malformed raml metadata ({err}); export it again.") \
            from err
    problems = []
    if info.role not in ROLES:
        problems.append(f"role {info.role!r} (expected teacher or student)")
    if info.input_format not in INPUT_FORMATS:
        problems.append(f"input_format {info.input_format!r} (expected "
                        f"{' or '.join(INPUT_FORMATS)})")
    if not 8 <= info.resolution <= MAX_RESOLUTION:
        problems.append(f"resolution {info.resolution} (expected 8 to {MAX_RESOLUTION})")
    if not 1 <= info.embedding_dim <= MAX_EMBEDDING_DIM:
        problems.append(f"embedding_dim {info.embedding_dim}")
    if not all(math.isfinite(v) for v in info.mean) or \
            not all(math.isfinite(v) and v > 0 for v in info.std):
        problems.append(f"mean {list(info.mean)} / std {list(info.std)}")
    if len(info.sha256) != 64:
        problems.append(f"model_sha256 {info.sha256!r} (expected 64 hex digits)")
    if problems:
        raise FormatError(f"{file} has impossible raml metadata: {'; '.join(problems)}. It "
                          "was edited or damaged; export it again.")
    return info


def _dims(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _check_graph(info: OnnxModelInfo, model: Any) -> None:
    """The graph's one input and output are those the metadata describes."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    found = {"inputs": [i.name for i in inputs], "outputs": [o.name for o in graph.output]}
    if found != {"inputs": [info.input_name], "outputs": [info.output_name]}:
        raise FormatError(f"{info.path}'s graph has the inputs {found['inputs']} and outputs "
                          f"{found['outputs']}, not the {info.input_name!r} -> "
                          f"{info.output_name!r} its metadata names; it was edited. Export it "
                          "again.")
    info.input_shape = _dims(inputs[0])
    info.output_shape = _dims(graph.output[0])
    batch = info.input_shape[0] if info.input_shape else None
    expected = input_shape(info.resolution, info.input_format,
                           batch if info.dynamic_batch and isinstance(batch, str) else 1)
    if info.input_shape != expected or info.output_shape[1:] != [info.embedding_dim]:
        raise FormatError(f"{info.path}'s graph takes {info.input_shape} and gives "
                          f"{info.output_shape}, which does not fit its metadata (input "
                          f"{info.input_format} at {info.resolution} px, "
                          f"{'dynamic' if info.dynamic_batch else 'fixed'} batch, "
                          f"{info.embedding_dim}-d output); it was edited. Export it again.")


def _floats3(text: str) -> tuple[float, float, float]:
    values = json.loads(text)
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"expected a JSON list of 3 numbers, got {text!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _boolean(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"dynamic_batch must be true or false, got {text!r}")
    return text == "true"
