"""An exported network run by onnxruntime: batches in, unit rows out.

``encoder(images)`` takes the graph's own input (float32 ``[B, 3, r, r]`` normalised, or
uint8 ``[B, r, r, 3]``); ``encoder.encode_batch`` a batch of raml's image pipeline.

>>> encoder, info = OnnxEncoder.open("student.onnx", threads=2)  # doctest: +SKIP
>>> encoder(images).shape  # doctest: +SKIP
(8, 512)
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from raml_cli.errors import ExportError, InputError
from raml_cli.export.convert import (
    CHECK_BATCHES_DYNAMIC,
    FLOAT_INPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    UINT8_INPUT,
    example_inputs,
    graph_module,
    input_shape,
    max_abs_difference,
    model_bytes,
    to_onnx,
)
from raml_cli.export.runtime import create_session

#: What the image pipeline must produce for a ``uint8-nhwc`` graph: the raw pixel values
#: (``ToNormalizedTensor`` with mean 0 and std 1/255 leaves them unchanged, as floats).
PIXEL_MEAN = (0.0, 0.0, 0.0)
PIXEL_STD = (1.0 / 255.0,) * 3


class OnnxEncoder:
    """Runs an exported embedding network on onnxruntime's CPU provider.

    Args:
        model: the serialised ONNX model (bytes) or the path of an ``.onnx`` file.
        resolution: the graph's input height and width.
        input_format: ``float32-nchw`` or ``uint8-nhwc``.
        dynamic_batch: whether the graph takes any batch size; a fixed-batch graph (1)
            runs a batch one image at a time.
        threads: onnxruntime's intra-op threads (default: torch's thread count).
    """

    def __init__(self, model: bytes | str | os.PathLike, *, resolution: int,
                 input_format: str, dynamic_batch: bool, threads: int | None = None,
                 mean: tuple[float, float, float] | None = None,
                 std: tuple[float, float, float] | None = None) -> None:
        self.session = create_session(model, threads)
        self.resolution = int(resolution)
        self.input_format = input_format
        self.dynamic_batch = bool(dynamic_batch)
        self.mean, self.std = mean, std

    @classmethod
    def open(cls, path: str | os.PathLike,
             threads: int | None = None) -> tuple[OnnxEncoder, Any]:
        """The encoder of an ``.onnx`` file of ``raml export`` and its
        :class:`~raml_cli.export.file.OnnxModelInfo` (checked)."""
        from raml_cli.export.file import read_onnx_info

        info = read_onnx_info(path)
        return cls.from_info(info, threads), info

    @classmethod
    def from_info(cls, info: Any, threads: int | None = None) -> OnnxEncoder:
        """The encoder of the file an :class:`~raml_cli.export.file.OnnxModelInfo` has
        already read and checked (``info.path``)."""
        return cls(info.path, resolution=info.resolution, input_format=info.input_format,
                   dynamic_batch=info.dynamic_batch, threads=threads, mean=info.mean,
                   std=info.std)

    @property
    def pipeline_mean(self) -> tuple[float, float, float] | None:
        """The ``mean`` to give raml's image pipeline (the evaluation transform) so that
        :meth:`encode_batch` gets what this graph needs."""
        return PIXEL_MEAN if self.input_format == UINT8_INPUT else self.mean

    @property
    def pipeline_std(self) -> tuple[float, float, float] | None:
        """The ``std`` to give raml's image pipeline (see :attr:`pipeline_mean`)."""
        return PIXEL_STD if self.input_format == UINT8_INPUT else self.std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Unit rows ``[B, D]`` (float32) of ``images`` in the graph's own input format
        (float32 ``[B, 3, r, r]`` normalised, or uint8 ``[B, r, r, 3]``)."""
        dtype = np.float32 if self.input_format == FLOAT_INPUT else np.uint8
        batch = np.ascontiguousarray(images, dtype=dtype)
        expected = input_shape(self.resolution, self.input_format, "B")
        if batch.ndim != 4 or list(batch.shape[1:]) != expected[1:] or len(batch) == 0:
            raise InputError(f"The ONNX model takes a batch of shape {expected} "
                             f"({self.input_format}); got {list(batch.shape)}.")
        if self.dynamic_batch:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return np.concatenate([self.session.run([OUTPUT_NAME], {INPUT_NAME: batch[i:i + 1]})[0]
                               for i in range(len(batch))])

    def encode_batch(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Unit rows of a batch of raml's image pipeline: float ``[B, 3, r, r]`` normalised
        with :attr:`pipeline_mean` / :attr:`pipeline_std` (for a ``uint8-nhwc`` graph
        these are raw pixel values, rounded and transposed here)."""
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if self.input_format == UINT8_INPUT:
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return self(array)


def encoder_for_network(network: nn.Module, res: int,
                        threads: int | None = None) -> tuple[OnnxEncoder, float]:
    """Export ``network`` in memory (float input, dynamic batch) and check it.

    Returns:
        The encoder and the max abs difference of the check against torch.

    Raises:
        ExportError: onnxruntime's rows differ from torch's by more than 1e-4.
    """
    data = model_bytes(to_onnx(network, res, input_format=FLOAT_INPUT, dynamic_batch=True))
    encoder = OnnxEncoder(data, resolution=res, input_format=FLOAT_INPUT, dynamic_batch=True,
                          threads=threads, mean=network.config.mean, std=network.config.std)
    difference = max_abs_difference(
        encoder.session, graph_module(network, FLOAT_INPUT),
        [example_inputs(res, FLOAT_INPUT, b) for b in CHECK_BATCHES_DYNAMIC])
    if not difference <= TOLERANCE:
        raise ExportError(
            f"onnxruntime's embeddings of this {network.config.architecture} network differ "
            f"from torch's by up to {difference:.3g} (more than {TOLERANCE:g}) on random "
            "inputs, so its rows would not match the database's. Search with --runtime torch.")
    return encoder, difference


def onnxruntime_latency_ms(network: nn.Module, res: int, batch_size: int = 1,
                           repeats: int = 10, threads: int | None = None,
                           warmup: int = 2) -> float:
    """Median wall time in milliseconds of onnxruntime running ``batch_size`` images at
    ``res`` px through ``network`` (exported in memory at that fixed batch size; the export
    itself is not timed). The counterpart of :func:`raml_cli.model.cost.latency_ms`.
    ``network`` may be plain or prepared by
    :func:`~raml_cli.model.inference.prepare_for_inference` (both export the same graph
    up to rounding; onnxruntime folds BatchNorm itself).

    Raises:
        InputError: the ``raml[onnx]`` extra is missing or the network cannot be exported.
    """
    if batch_size < 1 or repeats < 1:
        raise InputError(f"batch_size and repeats must be at least 1, got {batch_size} and "
                         f"{repeats}.")
    model = to_onnx(network, res, input_format=FLOAT_INPUT, dynamic_batch=False,
                    batch_size=batch_size)
    session = create_session(model_bytes(model), threads)
    feed = {INPUT_NAME: example_inputs(res, FLOAT_INPUT, batch_size)}
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
