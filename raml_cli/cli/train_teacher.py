"""``raml train-teacher``: train the large-resolution teacher with the triplet loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import DeviceOpt, JsonOpt, QuietOpt, ResumeOpt, RootOpt

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


def _help(text: str, default: object) -> str:
    return f"{text} [default: {default}]"


def command(
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset name (toy, cub200, cars196, "
                                         "sop) or a path: an image folder with one sub-folder "
                                         "per class, or a CSV of path,label[,split].")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The teacher model file to "
                                         "write; the checkpoint (.ckpt) and the log "
                                         "(.log.jsonl) go beside it.")
                      ] = Path("teacher.safetensors"),
    preset: Annotated[str | None, typer.Option(
        "--preset", help="paper: the reference's hyper-parameters for cub200, cars196 and sop "
        "(resnet50, ImageNet init, 448 px, GeM, 512-d, seed 1234; see docs/train.md). Options "
        "given explicitly still win.")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help=_help(
        "Backbone: a timm name (resnet50, resnet10t, ...) or torchvision/NAME.",
        "resnet50"))] = None,
    pool: Annotated[str | None, typer.Option("--pool", help=_help(
        "Global pooling: gem (learnable p), mac (max) or spoc (average).", "gem"))] = None,
    dim: Annotated[int | None, typer.Option("--dim", min=0, help=_help(
        "Output size of the whitening layer (0: no whitening).", 512))] = None,
    whitening_init: Annotated[str | None, typer.Option("--whitening-init", help=_help(
        "How the whitening layer starts: pca (the centred PCA whitening of pooled, "
        "L2-normalised descriptors of 1000 seeded training images, computed before the "
        "first epoch) or random.", "pca"))] = None,
    pretrained: Annotated[bool | None, typer.Option(
        "--pretrained/--no-pretrained", help=_help(
            "Start from ImageNet weights (needs the model hub or a local cache) or from "
            "random weights.", "--pretrained"))] = None,
    init_weights: Annotated[Path | None, typer.Option(
        "--init-weights", help="Start from the weights in this file (safetensors or a "
        "PyTorch state dict) instead; overrides --pretrained.")] = None,
    res: Annotated[int | None, typer.Option("--res", min=1, help=_help(
        "Training resolution in pixels (the database side).", 448))] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help=_help(
        "Epochs (of --images-per-epoch anchors).", 100))] = None,
    lr: Annotated[float | None, typer.Option("--lr", help=_help(
        "Peak learning rate of the one-cycle schedule (GeM's p: 10x).", "1e-4"))] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help=_help(
        "AdamW weight decay (none for GeM's p).", "1e-6"))] = None,
    samples_per_class: Annotated[int | None, typer.Option("--samples-per-class", min=2, help=_help(
        "Images of one class together in a batch (the positive is the hardest of them).",
        4))] = None,
    negatives: Annotated[int | None, typer.Option("--negatives", min=1, help=_help(
        "Negatives per anchor, drawn by distance-weighted sampling.", 4))] = None,
    positives: Annotated[str | None, typer.Option("--positives", help=_help(
        "Positives per anchor: all (every other image of its class in the batch, as the "
        "reference code) or hardest (the least similar one only; with hard negatives it "
        "collapses the space).", "all"))] = None,
    margin: Annotated[float | None, typer.Option("--margin", min=0.0, help=_help(
        "Triplet margin on squared distances of unit vectors.", 0.7))] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help=_help(
        "Anchors per forward pass (a multiple of --samples-per-class); each brings its "
        "negatives.", 20))] = None,
    accumulate: Annotated[int | None, typer.Option("--accumulate", min=1, help=_help(
        "Forward passes per optimiser step (gradient accumulation).", 1))] = None,
    images_per_epoch: Annotated[int | None, typer.Option("--images-per-epoch", min=0, help=_help(
        "Anchors per epoch (0: all images of the split).", 2000))] = None,
    pool_size: Annotated[int | None, typer.Option("--pool-size", min=1, help=_help(
        "Images embedded each epoch to draw negatives from.", 20000))] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help=_help(
        "DataLoader worker processes that decode images (on a CPU-only machine 0 or 1 is "
        "fastest: they share the cores with the network).", 4))] = None,
    seed: Annotated[int | None, typer.Option("--seed", help=_help(
        "Random seed; the same seed gives the same model on the same device.", 0))] = None,
    device: DeviceOpt = "auto",
    val_every: Annotated[int | None, typer.Option("--val-every", min=0, help=_help(
        "Validate (R@1, mAP on the val split) every N epochs and train on train minus val; "
        "0: no validation, train on all of train.", 0))] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help=(
        "Also checkpoint every N optimiser steps (a checkpoint is always written after "
        "every epoch)."))] = 0,
    resume: ResumeOpt = False,
    root: RootOpt = Path("data"),
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a teacher: triplet loss, distance-weighted negatives, at a large resolution.

    The model file records role=teacher, the resolution, the dataset and every option.
    The same command runs on several GPUs under torchrun (one process per GPU).
    """
    from raml_cli.cli.render import print_training_result
    from raml_cli.progress import Reporter
    from raml_cli.train.teacher import TeacherConfig, train_teacher_result

    init = str(init_weights) if init_weights is not None else (
        None if pretrained is None else ("pretrained" if pretrained else "none"))
    config = TeacherConfig.from_options(
        dataset, preset=preset, output=output, root=root, arch=arch, pool=pool, dim=dim,
        whitening_init=whitening_init,
        init=init, res=res, epochs=epochs, lr=lr, weight_decay=weight_decay,
        samples_per_class=samples_per_class, negatives=negatives, positives=positives,
        margin=margin,
        batch_size=batch_size, accumulate=accumulate, images_per_epoch=images_per_epoch,
        pool_size=pool_size, workers=workers, seed=seed, device=device, val_every=val_every,
        checkpoint_every=checkpoint_every, resume=resume,
    )
    result = train_teacher_result(config, Reporter(quiet=quiet))
    print_training_result(result, "teacher trained", "final loss", "val", json_out)


command.__doc__ = (command.__doc__ or "") + EXAMPLES
