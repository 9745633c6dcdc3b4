"""The query-side cost of a network: MACs per image and measured latency.

MACs (multiply-accumulates) are counted with :class:`torch.utils.flop_counter.FlopCounterMode`
over one real forward pass of a ``1 x 3 x res x res`` input, divided by 2 (PyTorch counts
a multiply-add as 2 FLOPs). It counts convolutions and matrix products (the whitening
layer) and leaves out BatchNorm, activations and pooling, the usual convention of papers
(ResNet-50 at 224 px: about 4.1 GMACs; the cost grows with the square of the resolution).

Latency is the median wall time of a forward pass (after warm-up), in inference mode, on
the given device, of the network as every raml command runs it
(:func:`~raml_cli.model.inference.prepare_for_inference`: BatchNorm folded, the device's
layout). :func:`bare_rate` measures the device's bare matrix-product rate in the same run,
the physical reference for the achieved GFLOP/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from raml_cli.devices import autocast, exact_float32, is_cuda


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

    A network not yet prepared is timed as :func:`prepare_for_inference` makes it (a copy:
    BatchNorm folded, the device's layout), which is how every raml command runs it; the
    input has the prepared network's layout. On CUDA the pass runs under bf16 autocast and
    is synchronised before the clock stops.
    """
    from raml_cli.model.inference import prepare_for_inference

    device = torch.device(device)
    network = prepare_for_inference(network, device)
    layout = torch.channels_last if network.inference.channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, int(res), int(res), device=device)
    x = x.contiguous(memory_format=layout)
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


def matmul_gflops(device: str | torch.device = "cpu", size: int = 2048, repeats: int = 5,
                  dtype: torch.dtype = torch.float32) -> float:
    """The bare matrix-product rate of ``device`` in GFLOP/s: the median of ``repeats``
    ``size x size x size`` products (``2 size^3`` FLOPs each) in ``dtype``, after one
    warm-up product; float32 is real float32 (TF32 off on CUDA)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    times = []
    with exact_float32():
        for i in range(repeats + 1):
            if is_cuda(device):
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            if is_cuda(device):
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times) / 1e9


def bare_rate(device: str | torch.device = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """The matrix-product rate (GFLOP/s) that the networks' passes are compared with: float32
    on the CPU, bf16 on CUDA (the dtype raml's CUDA passes run in)."""
    device = torch.device(device)
    dtype = torch.bfloat16 if is_cuda(device) else torch.float32
    return matmul_gflops(device, size, repeats, dtype=dtype)


def multiscale_macs(network: nn.Module, res: int, scales: list[float]) -> int:
    """Multiply-accumulates of a multi-scale query (``raml embed --scales``): one forward
    pass per scale, at ``round(res * scale)`` each."""
    return sum(macs_per_image(network, round(res * scale)) for scale in scales)


def profile(network: nn.Module, resolutions: list[int], device: str | torch.device = "cpu",
            repeats: int = 5, measure_latency: bool = True, batches: tuple[int, ...] = (1,),
            bare_gflops: float | None = None, compile: bool = False,
            timers: Mapping[str, Callable[[int, int], float]] | None = None,
            prepared: nn.Module | None = None, torch_runtime: bool = True,
            ) -> list[dict[str, Any]]:
    """The trade-off table: per resolution, MACs per image, and per runtime and batch size
    the median time of ``repeats`` passes.

    Args:
        network: the network (not modified: timed as prepared for inference).
        batches: batch sizes to time (e.g. ``(1, 32)``: latency and throughput).
        bare_gflops: the device's bare matrix-product rate, to report each pass's achieved
            GFLOP/s as a fraction of it (see :func:`bare_rate`); ``None``: not reported.
        compile: time the torch passes through ``torch.compile``.
        timers: other runtimes to time besides torch, by name: each a function
            ``(resolution, batch) -> median ms per pass`` (``raml info --runtime``).
        prepared: the torch network to time, already prepared for inference (default:
            ``network`` prepared here); MACs are always counted on ``network``.
        torch_runtime: time torch at all (``False``: only ``timers``).

    Returns:
        One dict per resolution: ``resolution`` (px), ``macs`` (per image), ``gmacs``,
        ``relative_macs`` (to the largest resolution), ``latency_ms`` (torch, batch 1;
        ``None`` when not measured) and ``timings``: one dict per (runtime, batch) with
        ``runtime``, ``batch``, ``ms`` (median per pass), ``images_per_s``, ``gflops``
        (2 x MACs x batch / time) and ``fraction_of_bare`` (``None`` without
        ``bare_gflops``).
    """
    from raml_cli.model.inference import prepare_for_inference

    device = torch.device(device)
    if prepared is None and measure_latency and torch_runtime:
        prepared = prepare_for_inference(network, device, compile=compile)
    rows = []
    for res in resolutions:
        macs = macs_per_image(network, res, device)
        timings = []
        measure: dict[str, Callable[[int, int], float]] = {}
        if measure_latency and torch_runtime:
            measure["torch"] = lambda r, b: latency_ms(prepared, r, device, batch_size=b,
                                                       repeats=repeats, warmup=1)
        if measure_latency:
            measure.update(timers or {})
        for runtime, timer in measure.items():
            for batch in batches:
                ms = float(timer(res, batch))
                gflops = 2.0 * macs * batch / (ms / 1000.0) / 1e9
                timings.append({"runtime": runtime, "batch": int(batch), "ms": ms,
                                "images_per_s": 1000.0 * batch / ms, "gflops": gflops,
                                "fraction_of_bare": gflops / bare_gflops if bare_gflops
                                else None})
        batch_one = [t["ms"] for t in timings if t["runtime"] == "torch" and t["batch"] == 1]
        rows.append({"resolution": int(res), "macs": macs, "gmacs": macs / 1e9,
                     "latency_ms": batch_one[0] if batch_one else None, "timings": timings})
    largest = max(r["macs"] for r in rows) if rows else 1
    for row in rows:
        row["relative_macs"] = row["macs"] / largest
    return rows
