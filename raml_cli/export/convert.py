"""The embedding network as an ONNX graph, and the check that onnxruntime agrees with torch.

The graph maps ``images`` to ``embeddings`` (unit rows ``[B, D]``, float32). Its input is
one of two formats:

- ``float32-nchw`` (the default): float32 ``[B, 3, res, res]``, already normalised as
  raml's evaluation transform leaves it: ``(pixel / 255 - mean) / std`` per RGB channel;
- ``uint8-nhwc`` (``with_preprocessing``): uint8 RGB ``[B, res, res, 3]`` (the layout of a
  decoded image), scaled, normalised and transposed inside the graph with the same float32
  arithmetic as :class:`raml_cli.data.transforms.ToNormalizedTensor`.

Either way the resize and crop are the caller's: raml's evaluation transform resizes the
shorter side to ``round(res * 8 / 7)`` (bilinear, antialiased) and centre-crops
``res x res`` (:func:`raml_cli.data.transforms.eval_transform`).

Exporter: torch's ``dynamo=True`` exporter (``torch.export`` + onnxscript), not the
TorchScript one. On torch 2.14 both convert the timm CNNs raml uses (resnet,
efficientnet_lite0, lcnet) with every pooling (GeM's learned exponent, R-MAC's regions)
to within 1e-6 of torch, and their graphs run at about the same speed on onnxruntime
(``benchmarks/bench_onnx.py --compare-exporters``: resnet50 + GeM at 112 px, batch 1, 11.2
against 11.9 ms; efficientnet_lite0 2.8 against 2.3 ms). But the TorchScript exporter is
deprecated since torch 2.9 and announced for removal, while the dynamo exporter is the
maintained default: raml should not stop exporting on a torch upgrade. It costs an extra
dependency (onnxscript, in the ``raml[onnx]`` extra) and a slower export (4 to 5 s against
0.6 to 0.8 s for those two networks).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from raml_cli.errors import ExportError, InputError
from raml_cli.export.runtime import require_exporter

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
FLOAT_INPUT = "float32-nchw"
UINT8_INPUT = "uint8-nhwc"
INPUT_FORMATS = (FLOAT_INPUT, UINT8_INPUT)
#: The ONNX operator set of exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 18
#: The largest batch a dynamic-batch graph is declared for.
MAX_BATCH = 65536
#: The largest difference between onnxruntime's and torch's rows that an export may show.
TOLERANCE = 1e-4
#: Batch sizes the export check runs: one, and (dynamic batch) a batch of several.
CHECK_BATCHES_FIXED = (1,)
CHECK_BATCHES_DYNAMIC = (1, 3)
#: protobuf's limit on one message: a larger model would need ONNX's external data files.
MAX_BYTES = 2**31 - 1


class Preprocessed(nn.Module):
    """uint8 RGB ``[B, H, W, 3]`` -> ``network``'s unit rows ``[B, D]``.

    ``pixel * (1 / (255 std)) - mean / std`` in float32 (the constants computed in float64,
    as :class:`~raml_cli.data.transforms.ToNormalizedTensor` does), then ``[B, 3, H, W]``.
    """

    def __init__(self, network: nn.Module, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        std64 = torch.tensor([float(v) for v in std], dtype=torch.float64)
        mean64 = torch.tensor([float(v) for v in mean], dtype=torch.float64)
        self.register_buffer("scale", (1.0 / (255.0 * std64)).float())
        self.register_buffer("offset", (mean64 / std64).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale - self.offset
        return self.network(x.permute(0, 3, 1, 2))


def graph_module(network: nn.Module, input_format: str) -> nn.Module:
    """The module that is exported: ``network``, or :class:`Preprocessed` around it."""
    if input_format not in INPUT_FORMATS:
        raise InputError(f"Unknown ONNX input format {input_format!r}; expected one of "
                         f"{', '.join(INPUT_FORMATS)}.")
    if input_format == UINT8_INPUT:
        config = network.config
        return Preprocessed(network, config.mean, config.std).eval()
    return network.eval()


def input_shape(res: int, input_format: str, batch: int | str) -> list[int | str]:
    """The graph input's shape: ``[B, 3, res, res]`` or ``[B, res, res, 3]``."""
    return [batch, 3, res, res] if input_format == FLOAT_INPUT else [batch, res, res, 3]


def example_inputs(res: int, input_format: str, batch: int, seed: int = 0) -> np.ndarray:
    """Random inputs of the graph's format (seeded): standard-normal floats (normalised
    images have roughly that spread) or uniform uint8 pixels."""
    rng = np.random.default_rng([seed, batch, res])
    shape = input_shape(res, input_format, batch)
    if input_format == UINT8_INPUT:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(size=shape, dtype=np.float32)


def to_onnx(network: nn.Module, res: int, *, input_format: str = FLOAT_INPUT,
            dynamic_batch: bool = False, batch_size: int = 1) -> Any:
    """Convert ``network`` (an :class:`~raml_cli.model.network.EmbeddingNetwork`; a copy on
    the CPU is exported when it is elsewhere) to an ``onnx.ModelProto`` at ``res x res``
    pixels.

    Args:
        input_format: :data:`FLOAT_INPUT` or :data:`UINT8_INPUT` (see the module's doc).
        dynamic_batch: the batch dimension is symbolic (``batch``); else it is fixed at
            ``batch_size``.

    Raises:
        InputError: the ``raml[onnx]`` extra is missing.
        ExportError: torch cannot export the network.
    """
    require_exporter()
    if any(p.device.type != "cpu" for p in network.parameters()):
        network = copy.deepcopy(network).cpu()  # the caller's network stays where it is
    module = graph_module(network, input_format)
    # A dynamic batch is traced with 2 rows: torch.export specialises a dimension of size 1.
    trace_batch = 2 if dynamic_batch else int(batch_size)
    example = torch.from_numpy(example_inputs(res, input_format, trace_batch))
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    with warnings.catch_warnings():
        # The exporter's notes (deprecations inside timm/torch) are not the user's to act on.
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=OPSET,
                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
        except Exception as err:  # the exporter raises many kinds; all mean the same here
            first = str(err).strip().splitlines()[0] if str(err).strip() else \
                type(err).__name__
            architecture = getattr(getattr(network, "config", None), "architecture", "network")
            raise ExportError(
                f"torch {torch.__version__} cannot export this {architecture} network to "
                f"ONNX at {res} px ({type(err).__name__}: {first}). Try another --res, or "
                "use the .safetensors model with the torch runtime."
            ) from err
    return program.model_proto


def model_bytes(model: Any) -> bytes:
    """The serialised ``onnx.ModelProto`` (weights inside), or an :class:`ExportError` for a
    network over the 2 GiB that one ONNX file holds."""
    size = model.ByteSize()
    if size > MAX_BYTES:
        raise ExportError(f"The exported network is {size / 2**30:.1f} GiB, over the 2 GiB "
                         "that one ONNX file holds; raml exports networks up to that size.")
    return model.SerializeToString()


def max_abs_difference(session: Any, module: nn.Module, inputs: Sequence[np.ndarray]) -> float:
    """The largest ``|onnxruntime - torch|`` over the rows of each input batch.

    ``module``: what was exported (:func:`graph_module`); ``inf`` when the shapes differ
    or an output is not finite.
    """
    worst = 0.0
    was_training = module.training
    module.eval()
    try:
        for batch in inputs:
            ours = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            with torch.inference_mode():
                reference = module(torch.from_numpy(batch)).float().numpy()
            if ours.shape != reference.shape or not np.isfinite(ours).all():
                return math.inf
            worst = max(worst, float(np.abs(ours - reference).max()))
    finally:
        module.train(was_training)
    return worst
