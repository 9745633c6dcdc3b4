"""Running one training command as several processes (``torchrun --nproc_per_node N``).

torchrun starts N copies of the same command and tells each its ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment. :func:`init_distributed`
reads them once: without torchrun it returns a single-process setup and nothing
else changes. With it, each process joins the group (NCCL on GPUs, gloo on the
CPU) and takes the GPU of its local rank. The collectives below are no-ops in a
single process, so engine code can call them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from raml_cli.devices import resolve_device
from raml_cli.errors import InputError


@dataclass(frozen=True)
class DistributedSetup:
    """Where this process runs: its device and its place in the job."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_spec: str = "auto") -> DistributedSetup:
    """Resolve the device and, under torchrun, join the process group.

    Under torchrun, ``--device auto``/``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per
    process, NCCL) and ``--device cpu`` runs every process on the CPU (gloo).
    """
    if not launched_by_torchrun():
        return DistributedSetup(device=resolve_device(device_spec))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"torchrun started {world_size} processes but this machine has only "
                f"{torch.cuda.device_count()} GPU(s). Use --nproc_per_node "
                f"{torch.cuda.device_count()} or fewer, or --device cpu."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedSetup(device=device, rank=rank, local_rank=local_rank,
                            world_size=world_size)


def shutdown_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if _active():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes (``value`` itself alone)."""
    if not _active():
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over the processes."""
    if not _active():
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_rows(rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Gather each process's ``rows`` (``[counts[rank], ...]``); returns one tensor per rank.

    Rows are padded to the largest count for the collective and trimmed afterwards, so
    processes may hold different numbers of rows.
    """
    if not _active():
        return [rows]
    world = dist.get_world_size()
    longest = max(counts)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[:n] for g, n in zip(gathered, counts, strict=True)]


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank ``src`` to every process (identity alone)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
