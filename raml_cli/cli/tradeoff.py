"""``raml tradeoff``: query quality against query cost, resolution against architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import (
    DeviceOpt,
    DistillOptionTypes,
    JsonOpt,
    QuietOpt,
    TrainingOptionTypes,
    parse_int_list,
    with_default,
)
from raml_cli.train.options import DistillConfig

EXAMPLES = """
Examples:

    raml tradeoff --teacher teacher.safetensors --query-res 224,160,112 \\
        --student-arch resnet50,resnet18,mobilenetv3_large_100 -o tradeoff/

    raml tradeoff --teacher raml-demo/teacher-128px.safetensors --query-res 40,64 \\
        --student-arch test_resnet,lcnet_035 --arch-init random --epochs 6 --lr 4e-3 \\
        --augs 4 --accumulate 1 --images-per-epoch 0 -o toy-tradeoff --json
"""

D = DistillConfig.defaults()
T = TrainingOptionTypes(
    DistillConfig, "images", batch_help="Images per forward pass (each with --augs views).",
    val_help="(not used)", model="student", preset_help="paper: the reference's values for "
    "the teacher's dataset, for every student.")
P = DistillOptionTypes(DistillConfig)


def command(
    teacher: Annotated[Path, typer.Option("--teacher", help="The teacher model file: it "
                                          "encodes the database and stays frozen.")],
    query_res: Annotated[str, typer.Option("--query-res", help="Comma-separated query "
                                           "resolutions, e.g. 224,160,112 (each at most the "
                                           "database resolution).")],
    student_arch: Annotated[str | None, typer.Option(
        "--student-arch", help="Comma-separated student architectures (timm names or "
        "torchvision/NAME); default: the teacher's. The teacher's gives RAML rows at each "
        "smaller resolution; another gives an architecture-asymmetric row at the database "
        "resolution and hybrid rows at the smaller ones.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of every cell's artifacts, "
                                      "tradeoff.json and tradeoff.png; a rerun reuses the "
                                      "cells already done there.")] = Path("tradeoff"),
    database_res: Annotated[int | None, typer.Option(
        "--database-res", min=8, help="The database resolution; default: the teacher's.")
    ] = None,
    arch_init: Annotated[str, typer.Option(
        "--arch-init", help="Initial weights of students of another architecture than the "
        "teacher's: pretrained (ImageNet; needs the model hub or its cache) or random.")
    ] = "pretrained",
    preset: T.Preset = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset name or the path of your own data; default: the "
        "teacher's.")] = None,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Folder that holds the datasets; default: the teacher's, else "
        "data.")] = None,
    init: Annotated[str | None, typer.Option("--init", help=with_default(
        "Initial weights of students of the teacher's architecture: teacher, pretrained or "
        "random.", D, "init"))] = None,
    mode: Annotated[str | None, typer.Option("--mode", help=with_default(
        "Distillation mode: aug or regression (as raml distill).", D, "mode"))] = None,
    augs: P.Augs = None,
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
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads of PyTorch; default: as it is.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every distillation.")] = 0,
    latency: Annotated[bool, typer.Option(
        "--latency/--no-latency", help="Time each query network at each of "
        "--latency-batches on --device (median of --repeats passes).")] = True,
    latency_batches: Annotated[str, typer.Option(
        "--latency-batches", help="Comma-separated batch sizes to time.")] = "1,32",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes per "
                                         "network and batch size.")] = 5,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compare cheap query sides at equal cost: a student of the teacher's architecture at
    smaller resolutions (RAML) against lighter architectures at the database resolution.

    Every student is distilled label-free into the teacher's space (the options of raml
    distill apply to all), embeds the test split at its resolution and searches the
    teacher's database; the teacher itself and the naive baseline (the teacher's own small
    queries) are rows too. Each row: R@K, mAP, MAP@R, the student's symmetric score, query
    GMACs and measured latency. Writes OUT/tradeoff.json and OUT/tradeoff.png.
    """
    from raml_cli.cli.render import percent, print_json, print_table
    from raml_cli.progress import Reporter
    from raml_cli.tradeoff import TradeoffConfig, run_tradeoff

    options = {"preset": preset, "dataset": dataset, "root": root, "init": init,
               "mode": mode, "augs": augs, "mixup": 0.0 if no_mixup else None,
               "lambda1": lambda1, "lambda2": lambda2, "epochs": epochs, "lr": lr,
               "weight_decay": weight_decay, "optimizer": optimizer, "momentum": momentum,
               "scheduler": scheduler, "batch_size": batch_size,
               "accumulate": accumulate, "images_per_epoch": images_per_epoch}
    archs = tuple(a.strip() for a in student_arch.split(",") if a.strip()) \
        if student_arch else ()
    config = TradeoffConfig(
        teacher=teacher, query_res=tuple(parse_int_list(query_res, "--query-res", 8,
                                                        "224,160,112")),
        student_archs=archs, out=out, database_res=database_res, arch_init=arch_init,
        distill={k: v for k, v in options.items() if v is not None}, device=device,
        seed=seed, workers=workers, threads=threads, measure_latency=latency,
        latency_repeats=repeats,
        latency_batches=tuple(parse_int_list(latency_batches, "--latency-batches", 1, "1,32")))
    result = run_tradeoff(config, Reporter(quiet=quiet))
    if json_out:
        print_json(result)
        return

    def ms(row: dict, key: str) -> str:
        value = (row["query_latency_ms"] or {}).get(key)
        return "-" if value is None else f"{value:.1f}"

    rows = [[r["kind"], r["student_arch"], f"{r['query_res']} -> {r['database_res']}",
             f"{r['query_gmacs']:.4g}", *[ms(r, f"batch_{b}") for b in config.latency_batches],
             percent(r["recall@1"]), percent(r["map"]), percent(r["map@r"]),
             percent(r["symmetric"]["recall@1"])] for r in result["rows"]]
    print_table(f"raml tradeoff: {result['dataset']} test, {result['num_queries']} queries "
                f"on {result['device']}",
                ["kind", "query network", "px", "GMACs",
                 *[f"ms b{b}" for b in config.latency_batches], "R@1", "mAP", "MAP@R",
                 "sym R@1"], rows,
                caption=f"{result['png']} ({result['seconds']:.0f} s)")
