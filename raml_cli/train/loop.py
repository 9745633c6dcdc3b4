"""The training loop shared by teacher training and distillation.

One loop, two tasks. The loop owns everything that is the same for every kind of
training: the optimiser (AdamW) and its one-cycle schedule, gradient accumulation,
DistributedDataParallel, mixed precision, checkpoints and ``--resume``, periodic
validation, the progress bar, the JSONL log and the NaN guard. A
:class:`TrainingTask` owns everything that differs: which network is trained, the
batches of an epoch, the loss of one batch, how validation scores the network, and
which file is written at the end.

How a task plugs in (teacher training: :mod:`raml_cli.train.teacher`; distillation:
:mod:`raml_cli.train.distill`)::

    class DistillTask(TrainingTask):
        role = "student"
        def describe(self): ...                     # options that define the run (JSON-able)
        def build(self, ctx): ...                   # student network on ctx.device; the frozen
                                                    # teacher is the task's own attribute,
                                                    # never part of the trained module
        def param_groups(self, module, lr, wd): ... # e.g. GeM p at 10x lr, no weight decay
        def batches_per_epoch(self, ctx): ...       # micro-batches per epoch on each rank
        def batches(self, epoch, start, ctx): ...   # this rank's micro-batches, from `start`
        def compute_loss(self, model, batch, ctx):  # one forward of `model` (DDP-wrapped)
            return LossOutput(loss, images)
        def validate(self, module, ctx): ...        # {"recall@1": .., "map": ..} on `val`
        def save(self, module, path, ctx, result): ...  # the final model file

    result = run_training(DistillTask(...), LoopConfig(output=..., epochs=..., lr=...), reporter)

Determinism contract (what makes ``--resume`` bit-exact on the CPU): everything
random in a task must be a function of ``(ctx.seed, epoch, position in the epoch)``
(see :func:`raml_cli.train.sampler.item_seeds` and
:class:`raml_cli.train.sampler.SeededDataset`), never of how many items were drawn
before, and ``batches(epoch, start, ctx)`` must yield exactly the micro-batches
``start, start + 1, ...`` of the uninterrupted run. Per-epoch state that cannot be
recomputed mid-epoch (e.g. negatives mined with the network at the start of the
epoch) goes into :meth:`TrainingTask.state_dict`, which is stored in every checkpoint.

Files (rank 0 alone writes): the final model at ``config.output`` (written by the
task; the *last* model, not the best validated one, because the one-cycle schedule
ends at a tiny learning rate and the best epoch is recorded in the log), a checkpoint
``OUT_STEM.ckpt`` beside it (removed when the run finishes) and the log
``OUT_STEM.log.jsonl`` (one JSON object per line: ``start``, ``step``, ``epoch``,
``val``, ``checkpoint``, ``resume``, ``end``).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from raml_cli.devices import autocast, is_cuda, to_device
from raml_cli.errors import InputError, TrainingError
from raml_cli.progress import NULL_REPORTER, Reporter


@dataclass
class LoopConfig:
    """Options of the loop itself (the task holds its own options).

    Attributes:
        output: the final model file; the checkpoint and the log are written beside it.
        epochs: number of epochs (an epoch is whatever the task's ``batches`` yields).
        lr: peak learning rate of the one-cycle schedule (per group: the group's own
            ``lr`` from :meth:`TrainingTask.param_groups`, defaulting to this).
        weight_decay: AdamW weight decay (per group overridable).
        accumulate: micro-batches per optimiser step (gradient accumulation).
        seed: the run's seed; the same seed gives the same run on the same device.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: the local GPU).
        workers: DataLoader worker processes.
        val_every: validate every this many epochs (and after the last); 0 = never.
        checkpoint_every: also checkpoint every this many optimiser steps (0: only at the
            end of every epoch).
        resume: continue from the checkpoint beside ``output``.
        log_every: write a ``step`` line to the JSONL log every this many optimiser steps.
        pct_start: fraction of the steps spent warming up (one-cycle).
        div_factor: initial lr = peak lr / div_factor (the reference uses 10).
        final_div_factor: final lr = initial lr / final_div_factor.
        channels_last: run convolutions in channels-last memory format.
        mixed_precision: bf16 autocast on CUDA (no effect on the CPU).
        threads: CPU threads for PyTorch (None: leave as is).
    """

    output: Path
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-6
    accumulate: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    val_every: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    log_every: int = 10
    pct_start: float = 0.3
    div_factor: float = 10.0
    final_div_factor: float = 1e4
    channels_last: bool = True
    mixed_precision: bool = True
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (paths as strings)."""
        out = asdict(self)
        out["output"] = str(self.output)
        return out


class LossOutput(NamedTuple):
    """What :meth:`TrainingTask.compute_loss` returns for one micro-batch.

    Attributes:
        loss: scalar tensor with gradient; a mean over the micro-batch (the loop divides by
            ``accumulate``, so a step's gradient is the mean over its micro-batches).
        images: number of training images the micro-batch fed through the trained network
            (for images/s).
        logs: optional extra scalars to log (e.g. the separate loss terms), floats or
            0-dim tensors; averaged over the epoch.
    """

    loss: torch.Tensor
    images: int
    logs: dict[str, Any] = {}


@dataclass
class LoopContext:
    """What the loop tells a task: where it runs and with which seed.

    Attributes:
        device: the device of this rank.
        rank, world_size: position in a torchrun job (0 and 1 without torchrun).
        seed: the run's seed.
        workers: DataLoader worker processes.
        channels_last: whether image batches should be channels-last.
        mixed_precision: whether forward passes run under bf16 autocast on CUDA.
        reporter: progress reporting (the task may open nested bars, e.g. for mining).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    workers: int = 0
    channels_last: bool = True
    mixed_precision: bool = True
    reporter: Reporter = NULL_REPORTER

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and validates (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> Any:
        """bf16 autocast on CUDA (when enabled), a no-op on the CPU."""
        return autocast(self.device, self.mixed_precision)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Copy an image batch to this rank's device (channels-last, non-blocking on CUDA)."""
        return to_device(images, self.device, channels_last=self.channels_last)

    def data_loader(self, dataset: Any, batch_sampler: Sequence[Sequence[Any]]) -> Any:
        """A DataLoader over precomputed batches (lists of dataset keys), pinned on CUDA."""
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.workers,
                          pin_memory=is_cuda(self.device),
                          persistent_workers=False)


class TrainingTask(ABC):
    """What a kind of training provides to :func:`run_training`.

    Call order: ``describe`` and ``build`` once; ``param_groups`` once; a checkpoint's
    ``load_state_dict`` when resuming; then per epoch ``begin_epoch`` (skipped when
    resuming into the middle of an epoch), ``batches`` with ``compute_loss`` per
    micro-batch, ``validate`` when due; finally ``save`` once. Every method but
    ``validate`` and ``save`` runs on every rank; those two run on rank 0 only and must
    not use collectives.
    """

    #: ``teacher`` or ``student``: written to the log and the model file.
    role: str = "teacher"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The task's options, JSON-able; a checkpoint of different options is refused."""

    @abstractmethod
    def build(self, ctx: LoopContext) -> nn.Module:
        """Build the trained network on ``ctx.device`` (identically on every rank).

        Also the place to load datasets and validate inputs (raise :class:`RamlError`).
        """

    def param_groups(self, module: nn.Module, lr: float,
                     weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups; default: every trainable parameter in one group."""
        params = [p for p in module.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    @abstractmethod
    def batches_per_epoch(self, ctx: LoopContext) -> int:
        """Micro-batches each rank runs per epoch; the same every epoch and on every rank."""

    def begin_epoch(self, epoch: int, module: nn.Module, ctx: LoopContext) -> None:  # noqa: B027
        """Prepare epoch ``epoch`` (0-based), e.g. mine negatives with ``module`` in eval mode.

        Runs on every rank (collectives allowed); the loop puts ``module`` back in
        training mode afterwards. Not called when resuming into the middle of an epoch.
        """

    @abstractmethod
    def batches(self, epoch: int, start: int, ctx: LoopContext) -> Iterator[Any]:
        """This rank's micro-batches ``start, start + 1, ...`` of epoch ``epoch``.

        Must yield ``batches_per_epoch(ctx) - start`` items (more are ignored), each
        whatever :meth:`compute_loss` takes, and depend only on ``(ctx.seed, epoch,
        ctx.rank, ctx.world_size)`` and the task's state.
        """

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
        """The loss of one micro-batch; call ``model`` (possibly DDP-wrapped) exactly once.

        Run forward passes under ``ctx.autocast()`` and move data with ``ctx.to_device``.
        """

    @abstractmethod
    def validate(self, module: nn.Module, ctx: LoopContext) -> dict[str, float]:
        """Score ``module`` (eval mode, no gradients) on the ``val`` split.

        Returns fractions in [0, 1] keyed as in :mod:`raml_cli.evaluate`
        (``recall@1``, ``map``, ...). Rank 0 only.
        """

    @property
    def primary_metric(self) -> str:
        """The validation metric whose best value the log records."""
        return "recall@1"

    def state_dict(self) -> dict[str, Any]:
        """Per-epoch state to store in checkpoints (tensors, numbers, strings, lists)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore :meth:`state_dict` when resuming."""

    @abstractmethod
    def save(self, module: nn.Module, path: Path, ctx: LoopContext,
             result: TrainingResult) -> None:
        """Write the final model file to ``path`` (atomically; rank 0 only)."""


@dataclass
class TrainingResult:
    """What a finished run reports.

    Attributes:
        output: the model file written.
        log: the JSONL log.
        epochs: epochs trained (in total, including those of an interrupted run).
        steps: optimiser steps (in total).
        final_loss: mean loss of the last epoch.
        images_per_second: training throughput of the last epoch (all ranks together).
        validations: one entry per validation: ``{"epoch": e, "metrics": {...}}``.
        best: the validation with the best primary metric (None without validation).
        seconds: wall-clock time of this invocation.
        resumed_from: ``(epoch, step_in_epoch)`` of the checkpoint resumed, or None.
    """

    output: Path
    log: Path
    epochs: int = 0
    steps: int = 0
    final_loss: float = float("nan")
    images_per_second: float = 0.0
    validations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    seconds: float = 0.0
    resumed_from: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"] = str(self.output)
        out["log"] = str(self.log)
        return out


def run_training(task: TrainingTask, config: LoopConfig,
                 reporter: Reporter = NULL_REPORTER) -> TrainingResult:
    """Train ``task`` with the shared loop and write its final model to ``config.output``.

    Works alone or under ``torchrun --nproc_per_node N`` (one process per device; rank 0
    writes every file). See the module docstring for files and the resume contract.

    Raises:
        InputError: bad loop options, an unwritable output, a stale checkpoint without
            ``--resume``.
        TrainingError: a NaN/inf loss (the last good checkpoint is kept), a checkpoint
            of a different run.
    """
    _check_config(config)
    return _Runner(task, config, reporter).run()


def _check_config(config: LoopConfig) -> None:
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1 (got {config.epochs})."),
        (config.lr > 0 and math.isfinite(config.lr),
         f"--lr must be a positive number (got {config.lr})."),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0 (got {config.weight_decay})."),
        (config.accumulate >= 1, f"--accumulate must be at least 1 (got {config.accumulate})."),
        (config.val_every >= 0, f"--val-every must be >= 0 (got {config.val_every})."),
        (config.checkpoint_every >= 0,
         f"--checkpoint-every must be >= 0 (got {config.checkpoint_every})."),
        (config.workers >= 0, f"--workers must be >= 0 (got {config.workers})."),
        (0 < config.pct_start < 1, f"pct_start must be in (0, 1) (got {config.pct_start})."),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def log_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line to the JSONL log ``path``."""
    record = {"time": round(time.time(), 3), **record}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = [
    "LoopConfig",
    "LoopContext",
    "LossOutput",
    "TrainingResult",
    "TrainingTask",
    "run_training",
    "log_line",
]
