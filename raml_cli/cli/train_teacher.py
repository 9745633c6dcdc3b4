"""``raml train-teacher``: train the large-resolution teacher with the triplet loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import (
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    ResumeOpt,
    RootOpt,
    TrainingOptionTypes,
    with_default,
)
from raml_cli.train.options import TeacherConfig

EXAMPLES = """
Examples:

    raml download toy
    raml train-teacher --dataset toy --res 128 --arch resnet10t --no-pretrained \\
        -o teacher.safetensors

    raml train-teacher --dataset cub200 --preset paper -o cub-teacher.safetensors

    torchrun --nproc_per_node 4 -m raml_cli train-teacher --dataset sop --preset paper \\
        -o sop-teacher.safetensors
"""

# Defaults are shown in the help text but resolved in the engine (TeacherConfig), so that
# --preset paper fills in only the options the user did not give.
D = TeacherConfig.defaults()
T = TrainingOptionTypes(
    TeacherConfig, "anchors",
    batch_help="Anchors per forward pass (a multiple of --samples-per-class); each brings its "
    "negatives.",
    val_help="Validate (R@1, mAP on the val split) every N epochs and train on train minus "
    "val; 0: no validation, train on all of train.",
    model="teacher",
    preset_help="paper: the reference's hyper-parameters for cub200, cars196 and sop "
    "(resnet50, ImageNet init, 448 px, GeM, 512-d, seed 1234; see docs/train.md).")


def command(
    dataset: DatasetOpt,
    output: T.Output = D["output"],
    preset: T.Preset = None,
    arch: Annotated[str | None, typer.Option("--arch", help=with_default(
        "Backbone: a timm name (resnet50, resnet10t, ...) or torchvision/NAME.", D,
        "arch"))] = None,
    pool: Annotated[str | None, typer.Option("--pool", help=with_default(
        "Global pooling: gem (learnable p), gemmp (one learnable p per channel), mac (max), "
        "spoc (average) or rmac (regional max over a multi-scale grid).", D, "pool"))] = None,
    dim: Annotated[int | None, typer.Option("--dim", min=0, help=with_default(
        "Output size of the whitening layer (0: no whitening).", D, "dim"))] = None,
    whitening_init: Annotated[str | None, typer.Option("--whitening-init", help=with_default(
        "How the whitening layer starts: pca (the centred PCA whitening of pooled, "
        "L2-normalised descriptors of 1000 seeded training images, computed before the "
        "first epoch) or random.", D, "whitening_init"))] = None,
    pretrained: Annotated[bool | None, typer.Option(
        "--pretrained/--no-pretrained", help=(
            "Start from ImageNet weights (needs the model hub or a local cache) or from "
            "random weights. [default: --pretrained]"))] = None,
    init_weights: Annotated[Path | None, typer.Option(
        "--init-weights", help="Start from the weights in this file (safetensors or a "
        "PyTorch state dict) instead; overrides --pretrained.")] = None,
    res: Annotated[int | None, typer.Option("--res", min=1, help=with_default(
        "Training resolution in pixels (the database side).", D, "res"))] = None,
    epochs: T.Epochs = None,
    lr: T.Lr = None,
    weight_decay: T.WeightDecay = None,
    optimizer: T.Optimizer = None,
    momentum: T.Momentum = None,
    scheduler: T.Scheduler = None,
    samples_per_class: Annotated[int | None, typer.Option(
        "--samples-per-class", min=2, help=with_default(
            "Images of one class together in a batch (the positive is the hardest of them).",
            D, "samples_per_class"))] = None,
    negatives: Annotated[int | None, typer.Option("--negatives", min=1, help=with_default(
        "Negatives per anchor, drawn by distance-weighted sampling.", D, "negatives"))] = None,
    positives: Annotated[str | None, typer.Option("--positives", help=with_default(
        "Positives per anchor: all (every other image of its class in the batch, as the "
        "reference code) or hardest (the least similar one only; with hard negatives it "
        "collapses the space).", D, "positives"))] = None,
    margin: Annotated[float | None, typer.Option("--margin", min=0.0, help=with_default(
        "Triplet margin on squared distances of unit vectors.", D, "margin"))] = None,
    batch_size: T.BatchSize = None,
    accumulate: T.Accumulate = None,
    images_per_epoch: T.ImagesPerEpoch = None,
    pool_size: Annotated[int | None, typer.Option("--pool-size", min=1, help=with_default(
        "Images embedded each epoch to draw negatives from.", D, "pool_size"))] = None,
    workers: T.Workers = None,
    seed: T.Seed = None,
    device: DeviceOpt = "auto",
    val_every: T.ValEvery = None,
    checkpoint_every: T.CheckpointEvery = 0,
    keep: T.Keep = None,
    patience: T.Patience = None,
    tensorboard: T.TensorBoard = None,
    resume: ResumeOpt = False,
    root: RootOpt = D["root"],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a teacher: triplet loss, distance-weighted negatives, at a large resolution.

    The model file records role=teacher, the resolution, the dataset and every option.
    The same command runs on several GPUs under torchrun (one process per GPU).
    """
    options = dict(locals())  # every option, first thing: `raml tune` reuses them
    from raml_cli.cli.render import print_training_result
    from raml_cli.progress import Reporter
    from raml_cli.train.teacher import train_teacher_result

    del options["quiet"], options["json_out"]
    config = config_from_options(**options)
    result = train_teacher_result(config, Reporter(quiet=quiet))
    print_training_result(result, "teacher trained", "final loss", "val", json_out)


def config_from_options(*, dataset, output, preset, arch, pool, dim, whitening_init,
                        pretrained, init_weights, res, epochs, lr, weight_decay, optimizer,
                        momentum, scheduler,
                        samples_per_class, negatives, positives, margin,
                        batch_size, accumulate, images_per_epoch, pool_size, workers, seed,
                        device, val_every, checkpoint_every, keep, patience, tensorboard,
                        resume, root) -> TeacherConfig:
    """The engine's options from the command's (what `raml tune train-teacher` shares)."""
    init = str(init_weights) if init_weights is not None else (
        None if pretrained is None else ("pretrained" if pretrained else "none"))
    return TeacherConfig.from_options(
        dataset, preset=preset, output=output, root=root, arch=arch, pool=pool, dim=dim,
        whitening_init=whitening_init,
        init=init, res=res, epochs=epochs, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
        momentum=momentum, scheduler=scheduler,
        samples_per_class=samples_per_class, negatives=negatives, positives=positives,
        margin=margin,
        batch_size=batch_size, accumulate=accumulate, images_per_epoch=images_per_epoch,
        pool_size=pool_size, workers=workers, seed=seed, device=device, val_every=val_every,
        checkpoint_every=checkpoint_every, resume=resume, keep=keep, patience=patience,
        tensorboard=tensorboard,
    )
