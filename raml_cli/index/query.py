"""The query model of ``raml search``: what encodes the query images, on which runtime.

- a ``.safetensors`` model file runs on onnxruntime (``--runtime onnxruntime``, the
  ``raml[onnx]`` extra) from its ONNX export, made on first use and cached
  (:mod:`raml_cli.export.cache`), or on torch (``--runtime torch``, the prepared network);
- an ``.onnx`` file of ``raml export`` runs on onnxruntime; its metadata gives the model's
  identity (for the compatibility check), its resolution and its normalisation.

``--runtime auto`` picks the faster: onnxruntime on the CPU whenever the extra is installed
(it encodes a 112 px query 1.3-1.9x (resnet50) and 2.6-4.5x (efficientnet_lite0) faster
than torch at batch 1 on the development machine, and is faster at batch 32 too;
docs/export.md),
torch on a GPU or without the extra. Under ``auto`` a model whose export fails runs on
torch, with a warning, and the failure is remembered so that the next search does not try
again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raml_cli.errors import InputError
from raml_cli.progress import NULL_REPORTER, Reporter

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

    ``auto``: onnxruntime for an ``.onnx`` file; for a ``.safetensors`` file onnxruntime
    when the device is the CPU and ``raml[onnx]`` (with the exporter) is installed, else
    torch.

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
    wanted = str(device).strip().lower()
    if onnx_file:
        chosen = "onnxruntime"
    elif name == "auto":
        from raml_cli.devices import resolve_device
        from raml_cli.export.runtime import onnx_available

        on_cpu = wanted == "cpu" or (wanted == "auto" and resolve_device(device).type == "cpu")
        chosen = "onnxruntime" if on_cpu and onnx_available(exporter=True) else "torch"
    else:
        chosen = name
    if chosen == "onnxruntime" and wanted not in ("auto", "cpu"):
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
        warnings: what the user is told (a fall-back to torch).
    """

    encode: Any | Callable[..., Any]
    info: Any
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    runtime: str
    device: Any
    check_difference: float | None = None
    warnings: list[str] = field(default_factory=list)


def open_query_model(model: str | os.PathLike, runtime: str, device: str,
                     res: int | None, *, fall_back: bool = False,
                     reporter: Reporter | None = None,
                     cache_dir: str | os.PathLike | None = None,
                     info: Any = None) -> QueryModel:
    """Load ``model`` for ``runtime`` (from :func:`choose_runtime`) at ``res`` px.

    A ``.safetensors`` model on onnxruntime runs its cached export
    (:func:`~raml_cli.export.cache.cached_onnx`, exported on first use; in memory when the
    cache folder cannot be written). ``fall_back`` (``--runtime auto``): a model whose
    export fails, now or before, runs on torch instead, with a warning. ``info``: the
    model's :func:`read_query_model_info`, when the caller has it already.

    Raises:
        InputError: ``res`` differs from an ``.onnx`` file's fixed resolution, or a missing
            ``raml[onnx]`` extra.
        ExportError: an export that does not reproduce torch's rows (unless ``fall_back``).
    """
    import torch

    from raml_cli.devices import resolve_device
    from raml_cli.errors import ExportError

    reporter = reporter or NULL_REPORTER
    if is_onnx_file(model):
        from raml_cli.export import OnnxEncoder

        encoder, info = OnnxEncoder.open(model)
        if res is not None and int(res) != info.resolution:
            raise InputError(f"{model} was exported at {info.resolution} px and takes only "
                             f"that size; got --res {res}. Drop --res, or export the "
                             f".safetensors model again with `raml export --res {res}`.")
        return QueryModel(encoder.encode_batch, info, info.resolution, encoder.pipeline_mean,
                          encoder.pipeline_std, "onnxruntime", torch.device("cpu"))
    warnings: list[str] = []
    if runtime == "onnxruntime":
        try:
            return _exported(model, res, fall_back, reporter, cache_dir, info)
        except ExportError as err:
            if not fall_back:
                raise
            warnings.append(f"{model} runs on torch, not onnxruntime: {err}")
            reporter.warn(warnings[-1])
    from raml_cli.model.files import load_model
    from raml_cli.model.inference import prepare_for_inference

    torch_device = resolve_device(device)
    network, info = load_model(model, torch_device)
    network = prepare_for_inference(network, torch_device, copy=False)
    return QueryModel(network, info, int(res or info.resolution), info.mean, info.std,
                      "torch", torch_device, warnings=warnings)


def _exported(model: str | os.PathLike, res: int | None, fall_back: bool,
              reporter: Reporter, cache_dir: str | os.PathLike | None,
              info: Any) -> QueryModel:
    """The ``.safetensors`` model ``model`` on onnxruntime, from its cached export (made
    now if needed; held in memory only when the cache folder cannot be written).

    Raises:
        ExportError: the export fails, or (``fall_back``) failed before.
    """
    import torch

    from raml_cli.errors import ExportError
    from raml_cli.export.cache import CachedExport, cached_onnx
    from raml_cli.export.encoder import OnnxEncoder, encoder_for_network
    from raml_cli.model.files import load_model, read_model_info

    info = info or read_model_info(model)
    resolution = int(res or info.resolution)
    entry = CachedExport.of(info.sha256, resolution, cache_dir)
    failure = entry.failure() if fall_back else None
    if failure is not None:
        raise ExportError(f"{failure} (recorded in {entry.failed}; delete it to try again)")
    onnx_info = cached_onnx(model, info.sha256, resolution, cache_dir=cache_dir,
                            reporter=reporter)
    cpu = torch.device("cpu")
    if onnx_info is None:
        reporter.log(f"the cache folder {entry.path.parent} cannot be written: exporting in "
                     "memory, for this search only")
        encoder, difference = encoder_for_network(load_model(model, "cpu")[0], resolution)
        return QueryModel(encoder.encode_batch, info, resolution, encoder.pipeline_mean,
                          encoder.pipeline_std, "onnxruntime", cpu, difference)
    encoder = OnnxEncoder.from_info(onnx_info)
    return QueryModel(encoder.encode_batch, info, resolution, encoder.pipeline_mean,
                      encoder.pipeline_std, "onnxruntime", cpu)
