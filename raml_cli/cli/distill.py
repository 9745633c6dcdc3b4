"""``raml distill``: distil a frozen teacher into a student for small query images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import (
    DeviceOpt,
    DistillOptionTypes,
    JsonOpt,
    QuietOpt,
    ResumeOpt,
    TrainingOptionTypes,
    with_default,
)
from raml_cli.train.options import DistillConfig

EXAMPLES = """
Examples:

    raml distill --teacher teacher.safetensors --query-res 64 -o student.safetensors

    raml distill --teacher cub-teacher.safetensors --query-res 112 --preset paper \\
        -o cub-student-112.safetensors

    raml distill --teacher teacher.safetensors --query-res 64 --mode regression \\
        --epochs 20 -o student-regression.safetensors

    raml distill --teacher teacher.safetensors --query-res 448 \\
        --student-arch mobilenetv3_large_100 --init pretrained -o student-mobilenet.safetensors
"""

# Defaults are shown in the help text but resolved in the engine (DistillConfig), so that
# --preset paper fills in only the options the user did not give.
D = DistillConfig.defaults()
T = TrainingOptionTypes(
    DistillConfig, "images",
    batch_help="Images per forward pass (each with --augs views).",
    val_help="Validate asymmetrically (student at --query-res vs teacher at the database "
    "resolution, R@1 and mAP on the val split) every N epochs and train on train minus "
    "val; 0: no validation, train on all of train.",
    model="student",
    preset_help="paper: the reference's values for the teacher's dataset (cub200, cars196, "
    "sop): lambda1, lambda2 and lr per dataset, ImageNet init, 8 images x 8 augmentations, "
    "25 steps of accumulation, 2000 images per epoch, 100 epochs, seed 1234.")
P = DistillOptionTypes(DistillConfig)


def command(
    teacher: Annotated[Path, typer.Option("--teacher", help="The teacher model file (from "
                                          "`raml train-teacher`); it stays frozen.")],
    query_res: Annotated[int, typer.Option("--query-res", min=1, help="The student's "
                                           "resolution in pixels (the query side).")],
    output: T.Output = D["output"],
    preset: T.Preset = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset name or the path of your own data; default: the "
        "teacher's training dataset.")] = None,
    database_res: Annotated[int | None, typer.Option(
        "--database-res", min=1, help="The teacher's resolution; default: the one it was "
        "trained at.")] = None,
    student_arch: Annotated[str | None, typer.Option(
        "--student-arch", help="The student's backbone (any timm name or torchvision/NAME); "
        "default: the teacher's. A lighter architecture at the database resolution is "
        "architecture asymmetry; it ends with a whitening layer of the teacher's embedding "
        "size (recorded in the model file) so its vectors live in the teacher's space, and "
        "needs --init pretrained, random or --init-weights.")] = None,
    init: Annotated[str | None, typer.Option("--init", help=with_default(
        "The student's initial weights: teacher (a copy of the teacher; same architecture "
        "only), pretrained (ImageNet weights; needs the model hub or its cache) or random "
        "(BatchNorm statistics measured on training images, then frozen).", D, "init"))] = None,
    init_weights: Annotated[Path | None, typer.Option(
        "--init-weights", help="Start the student from the weights in this file (safetensors "
        "or a PyTorch state dict) instead; overrides --init.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help=with_default(
        "aug: coupled augmentations and the full loss (the paper's method); regression: only "
        "the absolute term on cached teacher vectors of un-augmented images (cheaper).", D,
        "mode"))] = None,
    augs: P.Augs = None,
    mixup: Annotated[float | None, typer.Option(
        "--mixup", min=0.0, metavar="ALPHA", help=with_default(
            "Mixup's Beta(alpha, alpha) parameter.", D, "mixup"))] = None,
    no_mixup: P.NoMixup = False,
    lambda1: P.Lambda1 = None,
    lambda2: P.Lambda2 = None,
    epochs: T.Epochs = None,
    lr: T.Lr = None,
    weight_decay: T.WeightDecay = None,
    optimizer: T.Optimizer = None,
    momentum: T.Momentum = None,
    scheduler: T.Scheduler = None,
    batch_size: T.BatchSize = None,
    accumulate: T.Accumulate = None,
    images_per_epoch: T.ImagesPerEpoch = None,
    workers: T.Workers = None,
    seed: T.Seed = None,
    device: DeviceOpt = "auto",
    val_every: T.ValEvery = None,
    checkpoint_every: T.CheckpointEvery = 0,
    keep: T.Keep = None,
    patience: T.Patience = None,
    tensorboard: T.TensorBoard = None,
    resume: ResumeOpt = False,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Folder that holds the datasets; default: the teacher's, else "
        "data.")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Distil a student at a small query resolution from a frozen teacher (no labels).

    The student learns to produce, from a small image, the vector the teacher produces
    from the large one, so student queries search a teacher database directly. The
    dataset, architecture and database resolution come from the teacher's file. The
    student file records role=student, its own architecture, its resolution and the
    teacher's sha256 (and the teacher's architecture in its config).
    """
    options = dict(locals())  # every option, first thing: `raml tune` reuses them
    from raml_cli.cli.render import print_training_result
    from raml_cli.progress import Reporter
    from raml_cli.train.distill import distill_result

    del options["quiet"], options["json_out"]
    config = config_from_options(**options)
    result = distill_result(config, Reporter(quiet=quiet))
    print_training_result(result, "student distilled", "final loss (sum over a micro-batch)",
                          "val asymmetric", json_out)


def config_from_options(*, teacher, query_res, output, preset, dataset, database_res,
                        student_arch, init, init_weights, mode, augs, mixup, no_mixup,
                        lambda1, lambda2, epochs, lr, weight_decay, optimizer, momentum,
                        scheduler,
                        batch_size, accumulate, images_per_epoch, workers, seed, device,
                        val_every, checkpoint_every, keep, patience, tensorboard, resume,
                        root) -> DistillConfig:
    """The engine's options from the command's (what `raml tune distill` shares)."""
    return DistillConfig.from_options(
        teacher, query_res, preset=preset, output=output, dataset=dataset,
        database_res=database_res, root=root, student_arch=student_arch, init=init,
        init_weights=init_weights, mode=mode, augs=augs,
        mixup=0.0 if no_mixup else mixup, lambda1=lambda1, lambda2=lambda2, epochs=epochs,
        lr=lr, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum,
        scheduler=scheduler, batch_size=batch_size, accumulate=accumulate,
        images_per_epoch=images_per_epoch, workers=workers, seed=seed, device=device,
        val_every=val_every, checkpoint_every=checkpoint_every, resume=resume, keep=keep,
        patience=patience, tensorboard=tensorboard,
    )

