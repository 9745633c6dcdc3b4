"""The contract between the shared training loop and a kind of training.

:func:`raml_cli.train.loop.run_training` owns what is the same for every training; a
:class:`TrainingTask` owns what differs. The loop tells the task where it runs with a
:class:`LoopContext`, the task answers each micro-batch with a :class:`LossOutput`, and a
finished run is reported as a :class:`TrainingResult`.

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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from raml_cli.devices import autocast, is_cuda, to_device
from raml_cli.progress import NULL_REPORTER, Reporter


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
        checkpoint: the run's checkpoint file (for messages; the loop alone writes it).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    workers: int = 0
    channels_last: bool = True
    mixed_precision: bool = True
    reporter: Reporter = NULL_REPORTER
    checkpoint: Path | None = None

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

    def epoch_loader(self, dataset: Any) -> Any:
        """A :class:`~raml_cli.train.sampler.EpochLoader` (workers kept between epochs).

        Make one per dataset (e.g. in ``build``) and call ``.epoch(batches)`` in
        ``batches``.
        """
        from raml_cli.train.sampler import EpochLoader

        return EpochLoader(dataset, self.workers, pin_memory=is_cuda(self.device))


class TrainingTask(ABC):
    """What a kind of training provides to :func:`run_training`.

    Call order: ``describe`` and ``build`` once; ``param_groups`` once; a checkpoint's
    ``load_state_dict`` when resuming; then per epoch ``begin_epoch`` (skipped when
    resuming into the middle of an epoch), ``batches`` with ``compute_loss`` per
    micro-batch, ``validate`` when due; finally ``save`` once and ``close`` (also after an
    error). Every method but
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

    def close(self) -> None:  # noqa: B027
        """Release what the task holds (e.g. DataLoader workers); called once at the end,
        also after an error."""


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
        kept: what the model file holds: ``{"keep": "best"|"last", "epoch", "step",
            "metric", "metrics"}`` (the validation of that epoch, None when it had none);
            tasks record it in the model file's ``config`` under ``kept``.
        stopped_early: the run stopped before ``epochs`` for lack of patience.
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
    kept: dict[str, Any] | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"] = str(self.output)
        out["log"] = str(self.log)
        return out


__all__ = ["LoopContext", "LossOutput", "TrainingResult", "TrainingTask"]
