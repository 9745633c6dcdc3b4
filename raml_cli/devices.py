"""One device decision, made once and passed down.

``resolve_device("auto")`` picks CUDA when present, else the CPU. Mixed
precision, pinned memory and non-blocking copies are switched on from the
resolved device, never by sprinkling ``.cuda()`` through the code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from raml_cli.errors import InputError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a usable :class:`torch.device`.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise InputError(
                f"--device {spec!r} is not a valid device. Use auto, cpu, cuda or cuda:N "
                "with N a GPU index (0, 1, ...)."
            )
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {spec} was asked for, but this machine has no usable CUDA GPU "
                "(or this PyTorch build has no CUDA support). Use --device cpu, or --device "
                "auto to take a GPU only when one is present."
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise InputError(
                f"--device {spec} names GPU {index}, but only {torch.cuda.device_count()} "
                f"GPU(s) are visible (indices 0..{torch.cuda.device_count() - 1})."
            )
        return torch.device("cuda", index)
    raise InputError(
        f"--device {spec!r} is not a valid device. Use auto (CUDA when present), cpu, "
        "cuda or cuda:N."
    )


def is_cuda(device: torch.device) -> bool:
    """True when work on ``device`` runs on a GPU (pinned memory, async copies, autocast)."""
    return device.type == "cuda"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: bf16 autocast on CUDA, a no-op on the CPU.

    bf16 needs no loss scaling, which keeps the training loop the same on both devices.
    """
    if enabled and is_cuda(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(
    batch: torch.Tensor, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """Copy an image batch to ``device``; non-blocking from pinned memory on CUDA."""
    memory_format = torch.channels_last if channels_last and batch.dim() == 4 else None
    if memory_format is not None:
        return batch.to(device, non_blocking=is_cuda(device), memory_format=memory_format)
    return batch.to(device, non_blocking=is_cuda(device))


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Real float32 inside the block: TF32 off for matrix products and cuDNN convolutions
    (10-bit mantissas on NVIDIA tensor cores), the previous settings restored after. No
    effect on the CPU, which has no TF32."""
    matmul = torch.backends.cuda.matmul
    saved_precision = torch.get_float32_matmul_precision()
    saved_tf32 = matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(saved_precision)
        matmul.allow_tf32 = saved_tf32


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set the number of intra-op CPU threads (``None`` leaves it as is)."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
