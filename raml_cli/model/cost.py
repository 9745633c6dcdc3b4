"""The query-side cost of a network: MACs per image and measured latency.

MACs (multiply-accumulates) are counted with :class:`torch.utils.flop_counter.FlopCounterMode`
over one real forward pass of a ``1 x 3 x res x res`` input, divided by 2 (PyTorch counts
a multiply-add as 2 FLOPs). It counts convolutions and matrix products (the whitening
layer) and leaves out BatchNorm, activations and pooling, the usual convention of papers
(ResNet-50 at 224 px: about 4.1 GMACs; the cost grows with the square of the resolution).

Latency is the median wall time of a batch-1 forward pass (after warm-up), in
inference mode, on the given device.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from raml_cli.devices import autocast, is_cuda


def macs_per_image(network: nn.Module, res: int, device: str | torch.device = "cpu") -> int:
    """Multiply-accumulates of one forward pass of a ``res x res`` image.

    >>> from raml_cli.model.network import NetworkConfig, build_network
    >>> macs_per_image(build_network(NetworkConfig("resnet10t", whitening=0)), 32) > 0
    True
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    params = next(network.parameters(), None)
    if params is not None:
        device = params.device
    x = torch.zeros(1, 3, int(res), int(res), device=device)
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            network(x)
    finally:
        network.train(was_training)
    return int(counter.get_total_flops() // 2)


def latency_ms(network: nn.Module, res: int, device: str | torch.device = "cpu",
               batch_size: int = 1, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in milliseconds of one forward pass of ``batch_size`` images.

    The input is channels-last on every device; on CUDA the pass runs under bf16 autocast
    and is synchronised before the clock stops.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, 3, int(res), int(res), device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    network = network.to(device, memory_format=torch.channels_last).eval()
    times = []
    with torch.inference_mode(), autocast(device):
        for i in range(warmup + repeats):
            if is_cuda(device):
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            network(x)
            if is_cuda(device):
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def multiscale_macs(network: nn.Module, res: int, scales: list[float]) -> int:
    """Multiply-accumulates of a multi-scale query (``raml embed --scales``): one forward
    pass per scale, at ``round(res * scale)`` each."""
    return sum(macs_per_image(network, round(res * scale)) for scale in scales)


def profile(network: nn.Module, resolutions: list[int], device: str | torch.device = "cpu",
            repeats: int = 5, measure_latency: bool = True) -> list[dict[str, float | int]]:
    """The trade-off table: per resolution, MACs per image and batch-1 latency.

    Returns:
        One dict per resolution: ``resolution`` (px), ``macs`` (per image), ``gmacs``,
        ``relative_macs`` (to the largest resolution), and ``latency_ms`` (median of
        ``repeats`` batch-1 passes; ``None`` when not measured).
    """
    device = torch.device(device)
    network = network.to(device).eval()
    rows = []
    for res in resolutions:
        macs = macs_per_image(network, res)
        ms = latency_ms(network, res, device, repeats=repeats, warmup=1) if measure_latency \
            else None
        rows.append({"resolution": int(res), "macs": macs, "gmacs": macs / 1e9,
                     "latency_ms": ms})
    largest = max(r["macs"] for r in rows) if rows else 1
    for row in rows:
        row["relative_macs"] = row["macs"] / largest
    return rows
