"""The query model of ``raml search``: what encodes the query images, on which runtime.

- a ``.safetensors`` model file runs on torch (``--runtime torch``), or is exported to
  ONNX in memory and runs on onnxruntime (``--runtime onnxruntime``, the ``raml[onnx]``
  extra; checked against torch first);
- an ``.onnx`` file of ``raml export`` runs on onnxruntime; its metadata gives the model's
  identity (for the compatibility check), its resolution and its normalisation.

``--runtime auto`` picks onnxruntime for an ``.onnx`` file and torch for a ``.safetensors``
file: onnxruntime encodes a 112 px query 2.2x (resnet50) to 4.4x (efficientnet_lite0)
faster than torch (the prepared network) on the development machine, but the in-memory
export costs 9 to 14 s, which pays off only after 535 to 1,743 queries, more than one
search call usually holds (docs/export.md has the numbers). Export once with
``raml export`` and search with the ``.onnx`` file instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raml_cli.errors import InputError

RUNTIMES = ("auto", "torch", "onnxruntime")


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def read_query_model_info(path: str | os.PathLike) -> Any:
    """The checked metadata of a query model: a ``ModelInfo`` of a ``.safetensors`` file or
    an ``OnnxModelInfo`` of an ``.onnx`` file (both give ``sha256``, ``teacher_sha256``,
    ``role``, ``embedding_dim``, ``resolution``, ``mean``, ``std``)."""
    if is_onnx_file(path):
        from raml_cli.export import read_onnx_info

        return read_onnx_info(path)
    from raml_cli.model.files import read_model_info

    return read_model_info(path)


def choose_runtime(model: str | os.PathLike, runtime: str, device: str) -> str:
    """``torch`` or ``onnxruntime`` for ``model`` under ``--runtime`` and ``--device``.

    Raises:
        InputError: an unknown runtime, torch for an ``.onnx`` file, or onnxruntime with a
            GPU device (raml runs onnxruntime on the CPU).
    """
    name = str(runtime).strip().lower()
    if name not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
    onnx_file = is_onnx_file(model)
    if onnx_file and name == "torch":
        raise InputError(f"{model} is an ONNX model: it runs on onnxruntime, not torch. Use "
                         "--runtime onnxruntime (or auto), or search with the .safetensors "
                         "model it was exported from to run torch.")
    chosen = "onnxruntime" if onnx_file else ("torch" if name == "auto" else name)
    if chosen == "onnxruntime" and str(device).strip().lower() not in ("auto", "cpu"):
        raise InputError(f"onnxruntime runs on the CPU in raml; --device {device} asks for a "
                         "GPU. Use --device cpu, or the .safetensors model with --runtime "
                         "torch on the GPU.")
    return chosen


@dataclass
class QueryModel:
    """A ready query encoder and what ``embed_in_memory`` needs to feed it.

    Attributes:
        encode: a network (torch) or a callable of a normalised float batch (onnxruntime).
        info: the model's checked metadata (:func:`read_query_model_info`).
        mean, std: the normalisation the image pipeline applies for ``encode``.
        check_difference: for an in-memory export, the max abs difference of its check.
    """

    encode: Any | Callable[..., Any]
    info: Any
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    runtime: str
    device: Any
    check_difference: float | None = None


def open_query_model(model: str | os.PathLike, runtime: str, device: str,
                     res: int | None) -> QueryModel:
    """Load ``model`` for ``runtime`` (from :func:`choose_runtime`) at ``res`` px.

    Raises:
        InputError: ``res`` differs from an ``.onnx`` file's fixed resolution, or a missing
            ``raml[onnx]`` extra.
        ExportError: an in-memory export that does not reproduce torch's rows.
    """
    import torch

    from raml_cli.devices import resolve_device

    if is_onnx_file(model):
        from raml_cli.export import OnnxEncoder

        encoder, info = OnnxEncoder.open(model)
        if res is not None and int(res) != info.resolution:
            raise InputError(f"{model} was exported at {info.resolution} px and takes only "
                             f"that size; got --res {res}. Drop --res, or export the "
                             f".safetensors model again with `raml export --res {res}`.")
        return QueryModel(encoder.encode_batch, info, info.resolution, encoder.pipeline_mean,
                          encoder.pipeline_std, "onnxruntime", torch.device("cpu"))
    from raml_cli.model.files import load_model

    torch_device = resolve_device(device) if runtime == "torch" else torch.device("cpu")
    network, info = load_model(model, torch_device)
    resolution = int(res or info.resolution)
    if runtime == "torch":
        from raml_cli.model.inference import prepare_for_inference

        network = prepare_for_inference(network, torch_device, copy=False)
        return QueryModel(network, info, resolution, info.mean, info.std, "torch",
                          torch_device)
    from raml_cli.export import encoder_for_network

    encoder, difference = encoder_for_network(network, resolution)
    return QueryModel(encoder.encode_batch, info, resolution, encoder.pipeline_mean,
                      encoder.pipeline_std, "onnxruntime", torch_device, difference)
