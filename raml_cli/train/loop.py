"""The training loop shared by teacher training and distillation.

One loop, two tasks. The loop owns everything that is the same for every kind of
training: the optimiser (AdamW, Adam or SGD) and its schedule (one-cycle, cyclic,
exponential or none; :mod:`raml_cli.train.schedule`), gradient accumulation,
DistributedDataParallel, mixed precision, checkpoints and ``--resume``, periodic
validation, the progress bar, the JSONL log and the NaN guard. A
:class:`TrainingTask` owns everything that differs: which network is trained, the
batches of an epoch, the loss of one batch, how validation scores the network, and
which file is written at the end.

A task plugs in through the contract of :mod:`raml_cli.train.task` (what it provides,
the determinism that makes ``--resume`` bit-exact).

Files (rank 0 alone writes): the final model at ``config.output`` (written by the
task; with validation the best validated model by default, ``keep="last"`` for the last
one; which one, its epoch and metrics are in ``TrainingResult.kept``), a checkpoint
``OUT_STEM.ckpt`` beside it (removed when the run finishes) and the log
``OUT_STEM.log.jsonl`` (:mod:`raml_cli.train.runlog`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raml_cli.atomic import check_outputs_apart, ensure_writable_parent
from raml_cli.devices import is_cuda, torch_threads
from raml_cli.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from raml_cli.errors import InputError, TrainingError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.seeding import rng_state, seed_everything, set_rng_state
from raml_cli.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    pack_rng_state,
    run_signature,
    save_checkpoint,
    signature_differences,
    unpack_rng_state,
    upgrade_signature,
)
from raml_cli.train.runlog import log_line, log_path
from raml_cli.train.schedule import (
    OPTIMIZER_CHOICES,
    PER_EPOCH_SCHEDULERS,
    SCHEDULER_CHOICES,
    build_optimizer,
    build_scheduler,
)
from raml_cli.train.task import LoopContext, TrainingResult, TrainingTask


@dataclass
class LoopConfig:
    """Options of the loop itself (the task holds its own options).

    Attributes:
        output: the final model file; the checkpoint and the log are written beside it.
        epochs: number of epochs (an epoch is whatever the task's ``batches`` yields).
        lr: peak learning rate of the schedule (per group: the group's own ``lr`` from
            :meth:`TrainingTask.param_groups`, defaulting to this).
        weight_decay: the optimiser's weight decay (per group overridable).
        optimizer: ``adamw``, ``adam`` or ``sgd``; ``momentum``: SGD's momentum.
        scheduler: ``onecycle``, ``cyclic``, ``exponential`` or ``none``.
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
        channels_last: run convolutions in channels-last memory format; ``None`` (default):
            on CUDA only (on the CPU it is usually slower).
        mixed_precision: bf16 autocast on CUDA (no effect on the CPU).
        threads: CPU threads for PyTorch (None: leave as is).
        flush_denormal: on the CPU, flush denormal floats to zero while training (restored
            after). Tiny activations and gradients of small or freshly initialised networks
            otherwise become denormals, which the CPU computes with up to 100x slower.
        keep: ``best`` (the model of the best validation is written) or ``last``; None:
            ``best`` when validating, else ``last``.
        patience: stop after this many validations in a row without a new best (0: never).
        monitor: the validation metric (higher is better) that decides the best model and
            patience; None: the task's :attr:`~TrainingTask.primary_metric`.
        tensorboard: a folder to mirror the log's scalars into as TensorBoard events.
        on_validation: called on rank 0 after each validation with ``(epoch, metrics)``
            (e.g. to report to a hyper-parameter search); an exception it raises ends the
            run (the checkpoint is kept).
        inputs: the files the run reads, by what they are (``{"the teacher": path}``): the
            model, its checkpoint and its log must be none of them.
    """

    output: Path
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-6
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "onecycle"
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
    channels_last: bool | None = None
    mixed_precision: bool = True
    threads: int | None = None
    flush_denormal: bool = True
    keep: str | None = None
    patience: int = 0
    monitor: str | None = None
    tensorboard: Path | None = None
    on_validation: Callable[[int, dict[str, float]], None] | None = None

    @property
    def kept(self) -> str:
        """``best`` or ``last``: what the model file holds (``keep`` resolved)."""
        return self.keep or ("best" if self.val_every else "last")
    inputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (paths as strings; the callback left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "on_validation"}
        out["output"] = str(self.output)
        out["tensorboard"] = None if self.tensorboard is None else str(self.tensorboard)
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


class _Runner:
    """One invocation of :func:`run_training` (state that lives as long as the run)."""

    def __init__(self, task: TrainingTask, config: LoopConfig, reporter: Reporter) -> None:
        self.task = task
        self.config = config
        self.reporter = reporter
        self.output = Path(config.output)
        self.checkpoint = checkpoint_path(self.output)
        self.log = log_path(self.output)
        self.epoch = 0
        self.micro_batch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        # The best validation's weights (CPU), kept with keep="best" and in checkpoints.
        self.best_state: dict[str, torch.Tensor] | None = None
        self.scalars: Any = None  # the TensorBoard writer, when asked for

    # -- set-up ---------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        started = time.perf_counter()
        setup = init_distributed(self.config.device)
        flush = self.config.flush_denormal and not is_cuda(setup.device)
        flushing_before = _flushing_denormals()
        try:
            if flush:
                torch.set_flush_denormal(True)
            with torch_threads(self.config.threads):
                return self._run(setup, started)
        finally:
            self.task.close()
            if self.scalars is not None:
                self.scalars.close()
            if flush:
                torch.set_flush_denormal(flushing_before)
            shutdown_distributed()

    def _run(self, setup: Any, started: float) -> TrainingResult:
        cfg = self.config
        channels_last = is_cuda(setup.device) if cfg.channels_last is None else cfg.channels_last
        ctx = LoopContext(
            device=setup.device, rank=setup.rank, world_size=setup.world_size, seed=cfg.seed,
            workers=cfg.workers, channels_last=channels_last,
            mixed_precision=cfg.mixed_precision,
            reporter=self.reporter if setup.rank == 0 else NULL_REPORTER,
            checkpoint=self.checkpoint,
        )
        self.ctx = ctx
        self._preflight()
        seed_everything(cfg.seed)
        module = self.task.build(ctx).to(ctx.device)
        if ctx.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        groups = self.task.param_groups(module, cfg.lr, cfg.weight_decay)
        self.optimizer = build_optimizer(groups, cfg.optimizer, cfg.lr, cfg.weight_decay,
                                         cfg.momentum)
        micro_per_epoch = self.task.batches_per_epoch(ctx)
        self.steps_per_epoch = micro_per_epoch // cfg.accumulate
        if self.steps_per_epoch < 1:
            raise InputError(
                f"An epoch has {micro_per_epoch} micro-batch(es) per process but --accumulate "
                f"is {cfg.accumulate}, so not one optimiser step fits in an epoch. Lower "
                "--accumulate or --batch-size, or use more images per epoch."
            )
        self.micro_per_epoch = self.steps_per_epoch * cfg.accumulate
        self.scheduler = build_scheduler(
            self.optimizer, cfg.scheduler, cfg.epochs * self.steps_per_epoch,
            pct_start=cfg.pct_start, div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
        self.per_epoch_schedule = cfg.scheduler in PER_EPOCH_SCHEDULERS
        resumed_from = self._maybe_resume()
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model: nn.Module = DistributedDataParallel(
                module, device_ids=[ctx.device.index] if is_cuda(ctx.device) else None,
                broadcast_buffers=False,
            )
        else:
            model = module
        last_loss, last_rate = float("nan"), 0.0
        stopped_early = self._out_of_patience()
        while self.epoch < cfg.epochs and not stopped_early:
            last_loss, last_rate = self._train_epoch(model)
            self._end_of_epoch()
            stopped_early = self._out_of_patience()
        if stopped_early:
            ctx.reporter.log(f"no better validation {cfg.patience} time(s) in a row "
                             f"(--patience {cfg.patience}): stopped after epoch {self.epoch}")
            self._log({"event": "early_stop", "epoch": self.epoch, "step": self.global_step,
                       "patience": cfg.patience, "best_epoch": self.best["epoch"]})
        kept = self._kept_record()
        result = TrainingResult(
            output=self.output, log=self.log, epochs=self.epoch, steps=self.global_step,
            final_loss=last_loss, images_per_second=last_rate, validations=self.history,
            best=self.best, seconds=time.perf_counter() - started, resumed_from=resumed_from,
            kept=kept, stopped_early=stopped_early,
        )
        if ctx.is_main:
            if kept["keep"] == "best" and self.best_state is not None:
                module.load_state_dict(self.best_state)
            module.eval()
            self.task.save(module, self.output, ctx, result)
            self._log({"event": "end", **result.to_dict()})
            self.checkpoint.unlink(missing_ok=True)
        barrier()
        return result

    def _kept_record(self) -> dict[str, Any]:
        """What the model file holds: ``{"keep", "epoch", "step", "metric", "metrics"}``."""
        best = self.config.kept == "best" and self.best is not None
        entry = self.best if best else (self.history[-1] if self.history and
                                        self.history[-1]["epoch"] == self.epoch else None)
        return {"keep": "best" if best else "last",
                "epoch": entry["epoch"] if entry else self.epoch,
                "step": entry["step"] if entry else self.global_step,
                "metric": self._monitor(),
                "metrics": dict(entry["metrics"]) if entry else None}

    def _monitor(self) -> str:
        return self.config.monitor or self.task.primary_metric

    def _out_of_patience(self) -> bool:
        """Whether the last ``patience`` validations all failed to beat the best."""
        patience = self.config.patience
        if not patience or self.best is None or not self.history:
            return False
        since = [entry for entry in self.history if entry["epoch"] > self.best["epoch"]]
        return len(since) >= patience

    def _preflight(self) -> None:
        """Fail before any work: unwritable output, a stale checkpoint, no checkpoint."""
        # The checkpoint is deleted after the model is saved: -o t.ckpt would lose the model.
        check_outputs_apart({"the model file (-o)": self.output,
                             "its checkpoint": self.checkpoint, "its run log": self.log},
                            self.config.inputs)
        ensure_writable_parent(self.output)
        if not os.access(self.output.parent if str(self.output.parent) else Path("."),
                         os.W_OK):
            raise InputError(f"The output folder {self.output.parent} is not writable. Choose "
                             "another -o or fix its permissions.")
        if self.output.exists() and not os.access(self.output, os.W_OK):
            raise InputError(f"The output file {self.output} exists and cannot be overwritten. "
                             "Choose another -o or fix its permissions.")
        if self.checkpoint.exists() and not self.config.resume:
            raise InputError(
                f"A checkpoint of an unfinished run exists at {self.checkpoint}. Add --resume "
                "to continue that run, or delete the file to start over."
            )
        if self.config.resume and not self.checkpoint.exists():
            self.ctx.reporter.warn(f"--resume: no checkpoint at {self.checkpoint}; starting "
                                   "from the beginning.")
        if self.config.tensorboard is not None and self.ctx.is_main:
            from raml_cli.train.scalars import TensorBoardScalars

            self.scalars = TensorBoardScalars(self.config.tensorboard)

    def _signature(self) -> dict[str, Any]:
        return run_signature(self.task.role, self.task.describe(), self.config.to_dict(),
                             self.ctx.world_size)

    def _maybe_resume(self) -> tuple[int, int] | None:
        signature = self._signature()
        if not (self.config.resume and self.checkpoint.exists()):
            if self.ctx.is_main:
                self.log.unlink(missing_ok=True)
                self._log({"event": "start", "role": self.task.role, "signature": signature,
                           "config": self.config.to_dict(), "world_size": self.ctx.world_size,
                           "device": str(self.ctx.device)})
            return None
        state = load_checkpoint(self.checkpoint)
        stored = upgrade_signature(json.loads(state["signature"]))
        if stored != signature:
            raise TrainingError(
                f"The checkpoint {self.checkpoint} belongs to a run with different options "
                f"({signature_differences(stored, signature)}). Run with the original options "
                "to resume it, or delete the checkpoint to start a new run."
            )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.task.load_state_dict(state["task"])
        set_rng_state(unpack_rng_state(state["rng"]))
        self.epoch = int(state["epoch"])
        self.micro_batch = int(state["micro_batch"])
        self.global_step = int(state["global_step"])
        saved = json.loads(state["history"])
        self.history, self.best = saved["validations"], saved["best"]
        self.best_state = state.get("best_model")
        self.ctx.reporter.log(f"resumed from {self.checkpoint}: epoch {self.epoch + 1}, "
                              f"step {self.global_step}")
        self._log({"event": "resume", "epoch": self.epoch, "micro_batch": self.micro_batch,
                   "global_step": self.global_step})
        return (self.epoch, self.micro_batch)

    # -- one epoch ------------------------------------------------------------------------

    def _train_epoch(self, model: nn.Module) -> tuple[float, float]:
        """Train the rest of the current epoch; returns (mean loss, images/s of all ranks)."""
        cfg, ctx, task = self.config, self.ctx, self.task
        if self.micro_batch == 0:
            self.module.eval()
            task.begin_epoch(self.epoch, self.module, ctx)
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=ctx.device)
        loss_sum, loss_steps, images, in_step = 0.0, 0, 0, 0
        extras: dict[str, float] = {}
        extras_count = 0
        description = f"{task.role} epoch {self.epoch + 1}/{cfg.epochs}"
        with ctx.reporter.track(description, total=self.steps_per_epoch, unit="steps") as bar:
            bar.advance(self.micro_batch // cfg.accumulate)
            tick = time.perf_counter()
            batches = task.batches(self.epoch, self.micro_batch, ctx)
            for batch in batches:
                if self.micro_batch >= self.micro_per_epoch:
                    break
                last = in_step + 1 == cfg.accumulate
                sync = model.no_sync() if ctx.distributed and not last else _nothing()
                with sync:
                    out = task.compute_loss(model, batch, ctx)
                    (out.loss / cfg.accumulate).backward()
                step_loss += out.loss.detach().float()
                images += int(out.images)
                for key, value in out.logs.items():
                    extras[key] = extras.get(key, 0.0) + float(value)
                extras_count += 1
                in_step += 1
                self.micro_batch += 1
                if not last:
                    continue
                value = float(all_reduce_mean(step_loss / cfg.accumulate).item())
                if not math.isfinite(value):
                    self._nan_stop(value)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if not self.per_epoch_schedule:
                    self.scheduler.step()
                self.global_step += 1
                in_step = 0
                step_loss.zero_()
                loss_sum += value
                loss_steps += 1
                rate = images * ctx.world_size / max(time.perf_counter() - tick, 1e-9)
                bar.advance(1)
                bar.update(loss=loss_sum / loss_steps, img_s=round(rate, 1))
                if cfg.log_every and self.global_step % cfg.log_every == 0:
                    self._log({"event": "step", "epoch": self.epoch + 1,
                               "step": self.global_step, "loss": value,
                               "lr": self.scheduler.get_last_lr()[0], "images_per_s": rate})
                if (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                        and self.micro_batch < self.micro_per_epoch):
                    self._save_checkpoint()
            if hasattr(batches, "close"):
                batches.close()
        if self.micro_batch < self.micro_per_epoch:
            raise RuntimeError(
                f"{type(task).__name__}.batches yielded {self.micro_batch} micro-batches in "
                f"epoch {self.epoch + 1}, fewer than batches_per_epoch ({self.micro_per_epoch})."
            )
        elapsed = max(time.perf_counter() - tick, 1e-9)
        rate = images * ctx.world_size / elapsed
        mean_loss = loss_sum / max(loss_steps, 1)
        record = {"event": "epoch", "epoch": self.epoch + 1, "step": self.global_step,
                  "loss": mean_loss, "images_per_s": rate, "seconds": elapsed}
        record.update({key: total / max(extras_count, 1) for key, total in extras.items()})
        self._log(record)
        ctx.reporter.log(f"{task.role} epoch {self.epoch + 1}/{cfg.epochs}: loss "
                         f"{mean_loss:.4f}, {rate:.1f} images/s")
        return mean_loss, rate

    def _end_of_epoch(self) -> None:
        cfg = self.config
        self.epoch += 1
        self.micro_batch = 0
        if self.per_epoch_schedule:
            self.scheduler.step()  # before the checkpoint, which then resumes the next epoch
        due = cfg.val_every and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs)
        if due:
            self._validate()
        self._save_checkpoint()

    def _validate(self) -> None:
        ctx, task = self.ctx, self.task
        if ctx.is_main:
            self.module.eval()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in task.validate(self.module, ctx).items()}
            self.module.train()
            entry = {"epoch": self.epoch, "step": self.global_step, "metrics": metrics}
            key = self._monitor()
            if key not in metrics:
                raise InputError(f"The validation metric {key!r} is not measured by this "
                                 f"training; it measures {', '.join(metrics)}.")
            if self.best is None or metrics[key] > self.best["metrics"].get(key, -1.0):
                self.best = entry
                if self.config.kept == "best":
                    self.best_state = {k: v.detach().cpu().clone()
                                       for k, v in self.module.state_dict().items()}
            shown = ", ".join(f"{k} {v:.4f}" if k.endswith("cosine") else  # not a fraction
                              f"{k} {100 * v:.2f}" for k, v in metrics.items())
            ctx.reporter.log(f"validation after epoch {self.epoch}: {shown}")
            self._log({"event": "val", **entry})
            if self.config.on_validation is not None:
                self.config.on_validation(self.epoch, dict(metrics))
        else:
            entry = None
        # Every rank keeps the same history, so the result is the same on all of them.
        self.history.append(broadcast_object(entry))  # type: ignore[arg-type]
        self.best = broadcast_object(self.best)  # type: ignore[assignment]

    def _nan_stop(self, value: float) -> None:
        kept = (f"The last good checkpoint {self.checkpoint} was kept (the run up to it is "
                "sound); to train again with a lower --lr, delete it first." if
                self.checkpoint.exists() else "No checkpoint had been written yet.")
        self._log({"event": "nan", "epoch": self.epoch + 1, "step": self.global_step,
                   "loss": str(value)})
        raise TrainingError(
            f"The training loss became {value} at epoch {self.epoch + 1}, optimiser step "
            f"{self.global_step + 1}; the weights were not updated with it. This usually means "
            f"the learning rate is too high for this network and batch: try half of it. {kept}"
        )

    # -- files (rank 0) -------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        if not self.ctx.is_main:
            return
        signature = json.dumps(self._signature(), sort_keys=True)
        save_checkpoint(self.checkpoint, {
            "signature": signature,
            "epoch": self.epoch,
            "micro_batch": self.micro_batch,
            "global_step": self.global_step,
            "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "task": self.task.state_dict(),
            "rng": pack_rng_state(rng_state()),
            "history": json.dumps({"validations": self.history, "best": self.best}),
            "best_model": self.best_state,
        })
        self._log({"event": "checkpoint", "epoch": self.epoch, "micro_batch": self.micro_batch,
                   "step": self.global_step, "path": str(self.checkpoint)})

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            log_line(self.log, record)
            if self.scalars is not None:
                self.scalars.write(record)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (PyTorch has no getter for it)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    return bool((tiny * 1.0).item() == 0.0)


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def _check_config(config: LoopConfig) -> None:
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1 (got {config.epochs})."),
        (config.lr > 0 and math.isfinite(config.lr),
         f"--lr must be a positive number (got {config.lr})."),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0 (got {config.weight_decay})."),
        (config.accumulate >= 1, f"--accumulate must be at least 1 (got {config.accumulate})."),
        (config.optimizer in OPTIMIZER_CHOICES, f"--optimizer must be one of "
         f"{', '.join(OPTIMIZER_CHOICES)} (got {config.optimizer!r})."),
        (config.scheduler in SCHEDULER_CHOICES, f"--scheduler must be one of "
         f"{', '.join(SCHEDULER_CHOICES)} (got {config.scheduler!r})."),
        (0 <= config.momentum < 1, f"--momentum must be in [0, 1) (got {config.momentum})."),
        (config.val_every >= 0, f"--val-every must be >= 0 (got {config.val_every})."),
        (config.checkpoint_every >= 0,
         f"--checkpoint-every must be >= 0 (got {config.checkpoint_every})."),
        (config.workers >= 0, f"--workers must be >= 0 (got {config.workers})."),
        (0 < config.pct_start < 1, f"pct_start must be in (0, 1) (got {config.pct_start})."),
        (config.keep in (None, "best", "last"),
         f"--keep must be best or last (got {config.keep!r})."),
        (config.keep != "best" or config.val_every > 0,
         "--keep best needs validation: add --val-every N (or use --keep last)."),
        (config.patience >= 0, f"--patience must be >= 0 (got {config.patience})."),
        (config.patience == 0 or config.val_every > 0,
         "--patience needs validation: add --val-every N."),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


__all__ = ["LoopConfig", "run_training"]
