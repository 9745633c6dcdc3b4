"""Typed options shared by several commands (one definition, one help text).

The options every training command shares (``raml train-teacher``, ``raml distill``) come
from :class:`TrainingOptionTypes`, made once per command from the engine's options class,
so that the defaults ``--help`` shows are the engine's own
(:meth:`raml_cli.train.options.TrainingOptions.defaults`). Their parameters default to
``None`` in the command, so that a preset fills in only the options the user did not give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Where the work runs: auto (CUDA when present), cpu, cuda, "
                 "cuda:N.", show_default=True),
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile", help="Run the network through torch.compile: one compilation "
                 "per input shape first (seconds to minutes), then possibly faster passes; "
                 "measure with `raml info --compile` before relying on it."),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed; the same seed gives the same result on the "
                      "same device.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or status lines on stderr.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (nothing else there).")
]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Folder that holds the datasets (one sub-folder each).")
]
DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", help="A dataset name (toy, cub200, cars196, sop) or a path: an "
                 "image folder with one sub-folder per class, or a CSV of path,label[,split]."),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per forward pass.")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from where it stopped.")
]


def parse_int_list(text: str, option: str, minimum: int, example: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` for a comma-separated option; else an InputError.

    Spaces around items are allowed; an empty item, a non-integer or a value below
    ``minimum`` is refused with a message naming ``option`` and ``example``.
    """
    from raml_cli.errors import InputError

    parts = [part.strip() for part in text.split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values):
        raise InputError(f"{option} takes comma-separated integers >= {minimum}, e.g. "
                         f"{option} {example}; got {text!r}.")
    return values


def parse_float_list(text: str, option: str, example: str) -> list[float]:
    """``"1,0.7071,0.5"`` -> ``[1.0, 0.7071, 0.5]`` for a comma-separated option; else an
    InputError naming ``option`` and ``example`` (ranges are the engine's to check)."""
    from raml_cli.errors import InputError

    try:
        values = [float(part.strip()) for part in text.split(",")]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{option} takes comma-separated numbers, e.g. {option} {example}; "
                         f"got {text!r}.")
    return values


def shown_default(value: Any) -> str:
    """A default as ``--help`` shows it: ``1e-4`` rather than ``0.0001``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(value)


def with_default(text: str, defaults: dict[str, Any], name: str) -> str:
    """``text`` followed by ``[default: ...]`` with the engine's default of option ``name``."""
    return f"{text} [default: {shown_default(defaults[name])}]"


class TrainingOptionTypes:
    """``Annotated`` option types of the options every training command has.

    Args:
        config: the engine's options class (a :class:`~raml_cli.train.options.TrainingOptions`
            subclass); its defaults are shown in the help.
        unit: what ``--batch-size`` and ``--images-per-epoch`` count (``anchors``,
            ``images``).
        batch_help: the help of ``--batch-size`` (what one forward pass holds).
        val_help: the help of ``--val-every`` (how this training validates).
        model: what the output file holds (``teacher``, ``student``).
        preset_help: the help of ``--preset`` (what the preset sets for this training).

    >>> # T = TrainingOptionTypes(TeacherConfig, "anchors", "...", "...")
    >>> # def command(epochs: T.Epochs = None, lr: T.Lr = None, ...): ...
    """

    def __init__(self, config: Any, unit: str, batch_help: str, val_help: str, model: str,
                 preset_help: str) -> None:
        d = config.defaults()
        self.Output = Annotated[Path, typer.Option("--output", "-o", help=(
            f"The {model} model file to write; the checkpoint (.ckpt) and the log "
            "(.log.jsonl) go beside it."))]
        self.Preset = Annotated[str | None, typer.Option("--preset", help=(
            f"{preset_help} Or the path of a JSON file of options (e.g. best.json of "
            "`raml tune`). Options given explicitly still win."))]
        self.Epochs = Annotated[int | None, typer.Option("--epochs", min=1, help=with_default(
            f"Epochs (of --images-per-epoch {unit}).", d, "epochs"))]
        self.Lr = Annotated[float | None, typer.Option("--lr", help=with_default(
            "Peak learning rate of the schedule (GeM's p: 10x; gemmp's: 100x).", d, "lr"))]
        self.WeightDecay = Annotated[float | None, typer.Option(
            "--weight-decay", help=with_default("Weight decay of the optimiser (none for "
                                                "GeM's p).", d, "weight_decay"))]
        self.Optimizer = Annotated[str | None, typer.Option("--optimizer", help=with_default(
            "Optimiser: adamw, adam or sgd (with --momentum).", d, "optimizer"))]
        self.Momentum = Annotated[float | None, typer.Option(
            "--momentum", min=0.0, help=with_default("Momentum of --optimizer sgd.", d,
                                                     "momentum"))]
        self.Scheduler = Annotated[str | None, typer.Option("--scheduler", help=with_default(
            "Learning-rate schedule: onecycle (warm-up from lr/10, then down), cyclic "
            "(three triangular cycles from lr/10, each half as high), exponential (x "
            "exp(-0.001) per epoch) or none.", d, "scheduler"))]
        self.BatchSize = Annotated[int | None, typer.Option(
            "--batch-size", min=1, help=with_default(batch_help, d, "batch_size"))]
        self.Accumulate = Annotated[int | None, typer.Option(
            "--accumulate", min=1, help=with_default(
                "Forward passes per optimiser step (gradient accumulation).", d, "accumulate"))]
        self.ImagesPerEpoch = Annotated[int | None, typer.Option(
            "--images-per-epoch", min=0, help=with_default(
                f"{unit.capitalize()} per epoch (0: all images of the split).", d,
                "images_per_epoch"))]
        self.Workers = Annotated[int | None, typer.Option("--workers", min=0, help=with_default(
            "DataLoader worker processes that decode images (on a CPU-only machine 0 or 1 is "
            "fastest: they share the cores with the network).", d, "workers"))]
        self.Seed = Annotated[int | None, typer.Option("--seed", help=with_default(
            "Random seed; the same seed gives the same model on the same device.", d, "seed"))]
        self.ValEvery = Annotated[int | None, typer.Option(
            "--val-every", min=0, help=with_default(val_help, d, "val_every"))]
        self.CheckpointEvery = Annotated[int, typer.Option(
            "--checkpoint-every", min=0, help="Also checkpoint every N optimiser steps (a "
            "checkpoint is always written after every epoch).")]
        self.Keep = Annotated[str | None, typer.Option("--keep", help=(
            f"Which {model} the output file holds: best (the best validation's, by "
            "recall@1; its epoch and metrics are recorded in the file) or last. [default: "
            "best with --val-every, else last]"))]
        self.Patience = Annotated[int | None, typer.Option("--patience", min=0, help=(
            "Stop when N validations in a row did not beat the best (needs --val-every). "
            f"{with_default('0: never stop early.', d, 'patience')}"))]
        self.TensorBoard = Annotated[Path | None, typer.Option("--tensorboard", help=(
            "Also write loss, lr, images/s and every validation metric as TensorBoard "
            "scalars to this folder (needs `pip install 'raml[tensorboard]'`)."))]


class DistillOptionTypes:
    """``Annotated`` types of the distillation options that ``raml distill`` and ``raml
    tradeoff`` share, with ``config``'s defaults (a
    :class:`~raml_cli.train.options.DistillConfig`) in their help."""

    def __init__(self, config: Any) -> None:
        d = config.defaults()
        self.Augs = Annotated[int | None, typer.Option("--augs", min=1, help=with_default(
            "Coupled augmentations (views) per image.", d, "augs"))]
        self.NoMixup = Annotated[bool, typer.Option("--no-mixup", help="Turn mixup off.")]
        self.Lambda1 = Annotated[float | None, typer.Option("--lambda1", min=0.0, help=(
            with_default("Weight of the teacher-student relational term.", d, "lambda1")))]
        self.Lambda2 = Annotated[float | None, typer.Option("--lambda2", min=0.0, help=(
            with_default("Weight of the student-student relational term.", d, "lambda2")))]
