"""``raml tradeoff``: resolution asymmetry against architecture asymmetry, at equal cost.

For a teacher (database side, resolution ``R``), the grid of query-side students, each
distilled label-free into the teacher's space (:func:`raml_cli.train.distill.distill`),
embedded on the test split and evaluated against the teacher's database:

``teacher``       the teacher's own queries at ``R`` (symmetric; the upper bound)
``naive``         the teacher's queries at each ``r < R`` (no distillation)
``resolution``    a student of the teacher's architecture at ``r < R`` (RAML)
``architecture``  a student of another architecture at ``R`` (Budnik & Avrithis, CVPR 2021)
``hybrid``        a student of another architecture at ``r < R``

Each row has the query cost (GMACs per image, :func:`~raml_cli.model.cost.macs_per_image`;
latency at batch 1 and 32, the median of several timed passes on this device), the
asymmetric metrics (``recall@K``, ``map``, ``map_trapezoid``, ``map@r``) and the
symmetric score of the query network alone (its queries against its own vectors).

Every cell keeps its artifacts under ``OUT/cells/ARCH-Rpx/`` (student, checkpoint, log,
test embeddings) and the teacher's under ``OUT/embeddings/``. A rerun reuses a student
whose recorded options match the run's (as ``raml demo`` does), an embeddings file whose
model hash, resolution and image list match, and resumes an interrupted distillation
from its checkpoint. ``OUT/tradeoff.json`` holds the table and ``OUT/tradeoff.png`` the
picture (:mod:`raml_cli.tradeoff.plot`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_write_text
from raml_cli.errors import InputError
from raml_cli.progress import NULL_REPORTER, Reporter

KINDS = ("teacher", "naive", "resolution", "architecture", "hybrid")
#: Init of students of another architecture than the teacher's (``--init teacher`` cannot
#: apply to them).
ARCH_INITS = ("pretrained", "random")


@dataclass
class TradeoffConfig:
    """Options of ``raml tradeoff``.

    Attributes:
        teacher: the teacher's model file (database side).
        query_res: the query resolutions ``r`` (pixels); each at most ``R``.
        student_archs: the student architectures; default: the teacher's alone. The
            teacher's architecture gives ``resolution`` rows at each ``r < R``; another
            gives an ``architecture`` row at ``R`` and ``hybrid`` rows at each ``r < R``.
        out: the folder of every artifact (reused by a rerun).
        database_res: ``R``; default the teacher's training resolution.
        distill: options of :class:`~raml_cli.train.options.DistillConfig` for every
            student (epochs, lr, mode, init, dataset, root, ...).
        arch_init: the init of students of another architecture (``pretrained`` or
            ``random``); ``distill["init"]`` applies to the teacher's architecture.
        device, seed, workers, threads: as ``raml distill``.
        ks: recall cut-offs.
        latency_batches: batch sizes timed; latency_repeats: timed passes (median).
        measure_latency: time the query networks at all.
    """

    teacher: Path
    query_res: tuple[int, ...]
    student_archs: tuple[str, ...] = ()
    out: Path = Path("tradeoff")
    database_res: int | None = None
    distill: dict[str, Any] = field(default_factory=dict)
    arch_init: str = "pretrained"
    device: str = "auto"
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    ks: tuple[int, ...] = (1, 2, 4, 8)
    latency_batches: tuple[int, ...] = (1, 32)
    latency_repeats: int = 5
    measure_latency: bool = True


@dataclass
class Cell:
    """One query-side network of the grid."""

    kind: str
    arch: str
    query_res: int
    model: Path  # the teacher's file for ``teacher``/``naive`` rows
    queries: Path | None = None
    reused: bool = False


def run_tradeoff(config: TradeoffConfig, reporter: Reporter = NULL_REPORTER) -> dict[str, Any]:
    """Run (or continue) the grid; returns the object written to ``OUT/tradeoff.json``."""
    from raml_cli.devices import resolve_device, torch_threads
    from raml_cli.train.distill import DistillTask
    from raml_cli.train.options import DistillConfig, read_teacher_info

    started = time.perf_counter()
    info = read_teacher_info(Path(config.teacher))
    if config.arch_init not in ARCH_INITS:
        raise InputError(f"--arch-init must be one of {', '.join(ARCH_INITS)}, got "
                         f"{config.arch_init!r}.")
    probe = DistillConfig.from_options(config.teacher, min(config.query_res, default=8),
                                       database_res=config.database_res, **config.distill)
    task = DistillTask(probe, reporter, info)  # resolves R, the dataset and its root
    R = task.database_res
    cells = plan_cells(config, info.architecture, R)
    device = resolve_device(config.device)
    workers = config.workers if config.workers is not None else (
        1 if device.type == "cpu" else 4)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {id(c): _distill_config(config, c, info.architecture, R, str(device), workers)
               for c in cells if c.kind in ("resolution", "architecture", "hybrid")}
    for cfg in configs.values():  # every option error before any training
        cfg.check()
        DistillTask(cfg, NULL_REPORTER, info)
    with torch_threads(config.threads):
        samples, image_root, dataset_name = _test_split(task)
        for cell in cells:
            if id(cell) in configs:
                cell.model, cell.reused = _student(configs[id(cell)], info, reporter)
        database = _embed(info.path, R, out / "embeddings" / f"teacher-{R}px-test.h5",
                          samples, image_root, dataset_name, str(device), workers, reporter)
        for cell in cells:
            target = (out / "embeddings" / f"teacher-{cell.query_res}px-test.h5"
                      if cell.kind in ("teacher", "naive")
                      else cell.model.parent / f"queries-{cell.query_res}px-test.h5")
            cell.queries = _embed(cell.model, cell.query_res, target, samples, image_root,
                                  dataset_name, str(device), workers, reporter)
        rows = [_row(cell, database, config, device, R, reporter) for cell in cells]
    result = {
        "teacher": {"path": str(info.path), "sha256": info.sha256,
                    "architecture": info.architecture, "resolution": info.resolution},
        "database_res": R, "dataset": dataset_name, "split": "test",
        "num_queries": len(samples), "device": str(device), "rows": rows,
        "reused": [f"{c.arch}@{c.query_res}" for c in cells if c.reused],
        "seconds": round(time.perf_counter() - started, 1),
        "png": str(out / "tradeoff.png"),
    }
    atomic_write_text(out / "tradeoff.json", json.dumps(result, indent=2) + "\n")
    from raml_cli.tradeoff.plot import plot_tradeoff

    plot_tradeoff(rows, out / "tradeoff.png",
                  f"{dataset_name} test: queries against the {info.architecture} teacher at "
                  f"{R} px ({device})")
    reporter.log(f"tradeoff finished in {result['seconds']:.0f} s: {out / 'tradeoff.json'}, "
                 f"{out / 'tradeoff.png'}")
    return result


def plan_cells(config: TradeoffConfig, teacher_arch: str, R: int) -> list[Cell]:
    """The grid's rows in table order: teacher, naive (by resolution), then the students."""
    resolutions = sorted(set(int(r) for r in config.query_res), reverse=True)
    if not resolutions:
        raise InputError("--query-res needs at least one resolution, e.g. --query-res 224,112.")
    too_big = [r for r in resolutions if r > R]
    if too_big or min(resolutions) < 8:
        raise InputError(
            f"Query resolutions must lie between 8 px and the database resolution {R} px; "
            f"got {', '.join(map(str, resolutions))}. The trade-off is about cheaper "
            "queries: give --query-res values at most the database resolution.")
    archs = list(dict.fromkeys(config.student_archs or (teacher_arch,)))
    small = [r for r in resolutions if r < R]
    cells = [Cell("teacher", teacher_arch, R, Path(config.teacher))]
    cells += [Cell("naive", teacher_arch, r, Path(config.teacher)) for r in small]
    for arch in archs:
        if arch == teacher_arch:
            cells += [Cell("resolution", arch, r, Path()) for r in small]
        else:
            cells.append(Cell("architecture", arch, R, Path()))
            cells += [Cell("hybrid", arch, r, Path()) for r in small]
    return cells


def _slug(arch: str) -> str:
    return arch.replace("/", "-")


def _distill_config(config: TradeoffConfig, cell: Cell, teacher_arch: str, R: int,
                    device: str, workers: int) -> Any:
    from raml_cli.train.options import DistillConfig

    options = {"seed": config.seed, "workers": workers, "threads": config.threads,
               **config.distill}
    if cell.arch != teacher_arch and options.get("init_weights") is None:
        options["init"] = config.arch_init
    if cell.arch != teacher_arch:
        options.pop("init_weights", None)  # a file fits one architecture: the teacher's
    output = Path(config.out) / "cells" / f"{_slug(cell.arch)}-{cell.query_res}px" \
        / "student.safetensors"
    return DistillConfig.from_options(
        config.teacher, cell.query_res, output=output, device=device,
        database_res=config.database_res or R, student_arch=cell.arch, **options)


def _student(cfg: Any, info: Any, reporter: Reporter) -> tuple[Path, bool]:
    """The cell's student file: reused when trained with these options, else distilled
    (resumed from its checkpoint when one is there)."""
    from raml_cli.model.files import trained_with
    from raml_cli.train.checkpoint import checkpoint_path
    from raml_cli.train.distill import describe_distillation, distill

    output = Path(cfg.output)
    if trained_with(output, describe_distillation(cfg, info), teacher_sha256=info.sha256):
        reporter.log(f"reusing {output}")
        return output, True
    cfg.resume = checkpoint_path(output).exists()
    reporter.log(f"distilling {cfg.student_arch} at {cfg.query_res} px -> {output}")
    return distill(cfg, reporter, teacher_info=info), False


def _test_split(task: Any) -> tuple[list, Path, str]:
    from raml_cli.data.catalog import load_dataset

    splits = load_dataset(task.dataset_spec, task.root)
    samples = splits.split("test")
    if not samples:
        raise InputError(f"The dataset {splits.name} has no test split to evaluate on; give "
                         "a dataset with test classes (--dataset).")
    return samples, splits.root, splits.name


def _embed(model: Path, res: int, output: Path, samples: list, image_root: Path,
           dataset: str, device: str, workers: int, reporter: Reporter) -> Path:
    from raml_cli.embed import embed_dataset
    from raml_cli.model.files import file_sha256
    from raml_cli.store import is_current

    if is_current(output, model_sha256=file_sha256(model), resolution=res,
                  paths=[s.path for s in samples]):
        return output
    embed_dataset(model, output, samples, image_root, dataset=dataset, split="test", res=res,
                  workers=workers, device=device, reporter=reporter,
                  resume=output.with_name(output.name + ".partial").exists())
    return output


def _row(cell: Cell, database: Path, config: TradeoffConfig, device: Any, R: int,
         reporter: Reporter) -> dict[str, Any]:
    from raml_cli.evaluate import evaluate_sets
    from raml_cli.model.cost import latency_ms, macs_per_image
    from raml_cli.model.files import load_model
    from raml_cli.model.inference import prepare_for_inference
    from raml_cli.store import read_embeddings

    queries, db = read_embeddings(cell.queries), read_embeddings(database)
    asym = evaluate_sets(queries, db, ks=config.ks)
    sym = evaluate_sets(queries, ks=config.ks)
    if sym.query_space.collapsed:
        from raml_cli.evaluate.space import collapse_warning

        reporter.warn(collapse_warning(f"the space of {cell.queries.name} ({cell.kind} row)",
                                       sym.query_space))
    network, _ = load_model(cell.model, device)
    network = prepare_for_inference(network, device, copy=False)
    latency = None
    if config.measure_latency:
        reporter.log(f"timing {cell.arch} at {cell.query_res} px on {device}")
        latency = {f"batch_{b}": round(latency_ms(network, cell.query_res, device,
                                                  batch_size=b,
                                                  repeats=config.latency_repeats), 3)
                   for b in config.latency_batches}
    metrics = {k: round(float(v), 6) for k, v in asym.metrics.items()}
    return {
        "kind": cell.kind, "student_arch": cell.arch, "query_res": cell.query_res,
        "database_res": R,
        "query_gmacs": round(macs_per_image(network, cell.query_res) / 1e9, 6),
        "query_latency_ms": latency, **metrics,
        "query_mean_cosine": round(float(sym.query_space.mean_cosine), 4),
        "symmetric": {k: round(float(sym.metrics[k]), 6) for k in
                      (f"recall@{config.ks[0]}", "map", "map@r")},
        "model": str(cell.model), "queries": str(cell.queries), "reused": cell.reused,
    }


__all__ = ["ARCH_INITS", "KINDS", "Cell", "TradeoffConfig", "plan_cells", "run_tradeoff"]
