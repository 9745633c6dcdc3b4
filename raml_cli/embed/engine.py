"""Extraction: a model over a list of images, into an embeddings file or an array.

:func:`embed_dataset` is what ``raml embed`` runs. It streams: images are decoded by
DataLoader workers (reduced-size JPEG decoding when the target is much smaller), batched,
sent through the network prepared for inference (BatchNorm folded into the convolutions,
channels-last, see :mod:`raml_cli.model.inference`; bf16 autocast, pinned memory and
non-blocking copies on CUDA), and the rows are appended to ``OUT.h5.partial`` every
``chunk_rows`` images, so memory does not grow with the number of images. The file is
renamed to ``OUT.h5`` only when complete; after a crash or Ctrl-C, ``resume=True``
continues from the last complete chunk and yields the same file as an uninterrupted run
(same batches, same order).

Under ``torchrun --nproc_per_node N`` the images are split across the N processes in
rounds of ``N x batch_size`` consecutive images (process r takes the r-th batch of each
round); rank 0 gathers the rows of every round and writes them in input order, so the
output is one file, identical in layout to a single-process run.

:func:`embed_in_memory` is the same forward loop returning an array, for validation and
mining inside training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raml_cli.atomic import check_outputs_apart, partial_path
from raml_cli.data.dataset import Sample
from raml_cli.data.images import BadImage, Batch, ImageDataset, collate_skipping
from raml_cli.data.transforms import eval_transform
from raml_cli.devices import autocast, is_cuda, resolve_device, to_device
from raml_cli.errors import DataError, InputError, RamlError
from raml_cli.evaluate.space import SpaceSpread, spread_from_blocks
from raml_cli.model.inference import prepare_for_inference
from raml_cli.model.limits import check_resolution_range
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.store import iter_embedding_blocks

DEFAULT_BATCH_SIZE = 32
#: ``--scales``: the single-scale default, and the range of a scale.
SINGLE_SCALE = (1.0,)
MAX_SCALE = 4.0
DEFAULT_CHUNK_ROWS = 1024
#: More rows per write than this gain nothing and can exceed HDF5's 4 GiB chunk limit.
MAX_CHUNK_ROWS = 1 << 20


def default_workers(device: torch.device) -> int:
    """DataLoader workers when none are asked for.

    On the CPU the network and the decoders share the cores: with 2 or fewer cores,
    decoding inline (0 workers) is as fast and avoids process start-up; with more, a
    quarter of the cores decode. On CUDA, decoding is the bottleneck: up to 8 workers.
    """
    cores = os.cpu_count() or 1
    if is_cuda(device):
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else max(1, min(4, cores // 4))


@dataclass
class EmbedResult:
    """What :func:`embed_dataset` did (``raml embed --json`` prints it).

    Attributes:
        output: the embeddings file written.
        num_images: inputs considered (rows + skipped).
        num_rows: rows in the file; ``dim`` their size.
        skipped: input paths left out as unreadable (``--skip-bad``).
        resumed_from: inputs already done in the ``.partial`` file when resuming (0 if not).
        seconds: wall time of this run's extraction; ``images_per_second`` its throughput.
        rank: this process's rank under torchrun; rank 0 wrote the file and reports.
        space: the spread of the written file (:mod:`raml_cli.evaluate.space`), rank 0 only.
    """

    output: Path
    num_images: int
    num_rows: int
    dim: int
    resolution: int
    model_sha256: str
    role: str
    architecture: str
    dataset: str
    split: str
    device: str
    batch_size: int
    workers: int
    world_size: int = 1
    scales: list[float] = field(default_factory=lambda: [1.0])
    scale_power: float = 1.0
    resumed_from: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    rank: int = 0
    space: SpaceSpread | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["rank"]
        out["space"] = self.space.to_json() if self.space is not None else None
        out["output"] = str(self.output)
        out["num_skipped"] = len(self.skipped)
        return out


def check_scales(scales: Sequence[float], res: int, power: float = 1.0) -> tuple[float, ...]:
    """``scales`` as a tuple of floats, each in (0, 4] and at least 8 px at ``res``.

    Raises:
        InputError: an empty list, a scale out of range, a power that is not positive.
    """
    values = tuple(float(s) for s in scales)
    if not values:
        raise InputError("--scales needs at least one scale, e.g. 1 or 1,0.7071,0.5.")
    for scale in values:
        if not (0 < scale <= MAX_SCALE and math.isfinite(scale)):
            raise InputError(f"--scales: every scale must be in (0, {MAX_SCALE:g}], got "
                             f"{scale:g}. Use e.g. 1,0.7071,0.5.")
        if round(res * scale) < 8:
            raise InputError(f"--scales: {scale:g} of {res} px is {round(res * scale)} px, "
                             "below the smallest input of 8 px. Drop that scale or raise "
                             "--res.")
    if not (power > 0 and math.isfinite(power)):
        raise InputError(f"--scale-power must be a positive number, got {power:g}.")
    return values


def _signed_power(x: torch.Tensor, power: float) -> torch.Tensor:
    return x if power == 1 else x.sign() * x.abs().pow(power)


def _forward(network: nn.Module, images: torch.Tensor, device: torch.device,
             channels_last: bool, mixed_precision: bool,
             scales: Sequence[float] = SINGLE_SCALE, power: float = 1.0) -> torch.Tensor:
    """Unit rows ``[B, D]`` of a batch ``[B, 3, r, r]``; with several ``scales``, the
    L2-normalised generalised mean of the rows of the batch resized to ``round(r * s)``
    (bilinear, antialiased): ``normalize((mean_s f(x_s)^power)^(1/power))`` with signed
    powers."""
    batch = to_device(images, device, channels_last=channels_last)
    if tuple(scales) == SINGLE_SCALE:
        with autocast(device, enabled=mixed_precision):
            return network(batch).float()
    total = None
    side = batch.shape[-2:]
    for scale in scales:
        x = batch
        if scale != 1:
            size = (round(side[0] * scale), round(side[1] * scale))
            x = torch.nn.functional.interpolate(batch, size=size, mode="bilinear",
                                                align_corners=False, antialias=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, enabled=mixed_precision):
            rows = _signed_power(network(x).float(), power)
        total = rows if total is None else total + rows
    mean = _signed_power(total / len(scales), 1.0 / power)
    return torch.nn.functional.normalize(mean, dim=-1)


def _loader(dataset: ImageDataset, batches: list[list[int]], workers: int,
            device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_skipping,
        pin_memory=is_cuda(device), prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def _unwrap(network: nn.Module) -> nn.Module:
    return getattr(network, "module", network)  # DDP / DataParallel


def embed_in_memory(
    network: nn.Module | Callable[[torch.Tensor], np.ndarray],
    samples: Sequence[Sample],
    root: str | os.PathLike,
    res: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    workers: int = 0,
    *,
    channels_last: bool | None = None,
    mixed_precision: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    reporter: Reporter | None = None,
    description: str = "embedding",
) -> np.ndarray:
    """Unit embeddings ``[N, D]`` (float32) of ``samples`` with the evaluation transform.

    Args:
        network: an :class:`~raml_cli.model.network.EmbeddingNetwork` (or a DDP wrapper of
            one), already on ``device``; it is left as it is: the pass runs a copy
            prepared for inference (BatchNorm folded; see
            :func:`~raml_cli.model.inference.prepare_for_inference`), unless ``network``
            is already prepared. Or any other encoder: a callable mapping a normalised
            float32 CPU batch ``[B, 3, res, res]`` to unit rows ``[B, D]`` (e.g.
            :meth:`raml_cli.export.OnnxEncoder.encode_batch`); then ``mean`` and ``std``
            are required, and ``device``, ``channels_last`` and ``mixed_precision`` unused.
        samples: images relative to ``root``; rows come back in this order.
        res: the resolution (METHOD.md evaluation transform).
        channels_last: the layout of the prepared network and its batches; ``None``: the
            device's default.
        mixed_precision: bf16 autocast on CUDA (no effect on the CPU).
        mean, std: input normalisation; default ``network.config.mean/std``.

    Raises:
        DataError: an image cannot be read (naming it).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    module = network if isinstance(network, nn.Module) else None
    config = getattr(_unwrap(network), "config", None)
    if config is None and (mean is None or std is None):
        raise InputError("embed_in_memory: an encoder that is not a network needs mean and std.")
    mean = mean if mean is not None else config.mean
    std = std if std is not None else config.std
    dataset = ImageDataset(root, samples, eval_transform(res, mean, std), skip_bad=True)
    order = list(range(len(samples)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: np.ndarray | None = None
    reporter = reporter or NULL_REPORTER
    if not samples:
        raise InputError("No images to embed: the sample list is empty.")
    if module is not None:
        network = prepare_for_inference(network, device, channels_last=channels_last)
        layout = network.inference.channels_last
    with torch.inference_mode(), reporter.track(description, len(samples), "img") as bar:
        for batch in _loader(dataset, batches, workers, device):
            if batch.bad:
                raise DataError(batch.bad[0][1].reason)
            rows = _forward(network, batch.images, device, layout,
                            mixed_precision).cpu().numpy() if module is not None \
                else np.asarray(network(batch.images), dtype=np.float32)
            if out is None:
                out = np.empty((len(samples), rows.shape[1]), dtype=np.float32)
            out[batch.indices.numpy()] = rows
            bar.advance(len(rows))
    assert out is not None  # samples is not empty and a bad image raised
    return out


def resume_position(samples: Sequence[Sample], done_paths: Sequence[str],
                    skipped: Sequence[str]) -> tuple[int, list[str]]:
    """Where an unfinished file stops in ``samples``, checking that it was made from them.

    Rows and skipped paths are both in input order, so walking the inputs consumes them
    in turn. An input that is neither the next row nor the next skipped path, while rows
    remain, was skipped but its record was lost in a crash: it is returned to be recorded.

    Returns:
        ``(position, lost_skipped)``: the first input not yet done.

    Raises:
        InputError: the file holds rows of other inputs.
    """
    r = s = 0
    lost: list[str] = []
    position = 0
    total = len(done_paths) + len(skipped)
    while r + s < total and position < len(samples):
        path = samples[position].path
        if r < len(done_paths) and done_paths[r] == path:
            r += 1
        elif s < len(skipped) and skipped[s] == path:
            s += 1
        elif r < len(done_paths) and s == len(skipped):
            lost.append(path)
        else:
            break
        position += 1
    if r < len(done_paths) or s < len(skipped):
        first = done_paths[r] if r < len(done_paths) else skipped[s]
        here = samples[position].path if position < len(samples) else "(past the last input)"
        raise InputError(
            f"The unfinished output holds rows of other images than this run's inputs (its "
            f"entry {first!r} should be input {position}, {here!r}). Resume with the same "
            "images, dataset and split, or run again without --resume to start over."
        )
    return position, lost


def _rounds(start: int, total: int, batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This rank's batch in each round of ``world x batch_size`` inputs (possibly empty).

    Rounds lie on a fixed grid from input 0, also when resuming from ``start``: the batches
    are then the same as in an uninterrupted run, and so are the rows (a CPU convolution's
    result can depend on the batch it is in).
    """
    rounds = []
    span = world * batch_size
    for block in range(start - start % span, total, span):
        lo = min(total, max(start, block + rank * batch_size))
        hi = min(total, max(lo, block + (rank + 1) * batch_size))
        rounds.append(list(range(lo, hi)))
    return rounds


def embed_dataset(
    model: str | os.PathLike,
    output: str | os.PathLike,
    samples: Sequence[Sample],
    root: str | os.PathLike,
    *,
    dataset: str,
    split: str,
    res: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    device: str = "auto",
    resume: bool = False,
    skip_bad: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    reporter: Reporter | None = None,
    inputs: dict[str, str | os.PathLike] | None = None,
    scales: Sequence[float] = SINGLE_SCALE,
    scale_power: float = 1.0,
    compile: bool = False,
) -> EmbedResult:
    """Embed ``samples`` with the model file ``model`` into the embeddings file ``output``.

    Args:
        model: a raml model file (``.safetensors``).
        output: the ``.h5`` file to write (DESIGN.md schema), atomically.
        samples, root: the images (paths relative to ``root``) in output order.
        dataset, split: recorded in the file's attributes.
        res: resolution; default the model's training resolution.
        workers: DataLoader decoding processes; default :func:`default_workers`.
        device: ``auto``, ``cpu``, ``cuda[:N]``; under torchrun one process per GPU/CPU.
        resume: continue ``OUT.h5.partial`` from its last complete chunk.
        skip_bad: leave unreadable images out (recorded in ``/skipped``) instead of failing.
        chunk_rows: rows per write (rounded up to whole batches); the resume granularity.
        inputs: other files the run reads, by what they are (an image list, a CSV):
            ``output`` must be none of them, nor the model, nor one of the images.
        scales: multi-scale extraction: each image at each scale of ``res`` (the
            evaluation-transformed image resized), the vectors averaged with
            ``scale_power`` and L2-normalised (see :func:`_forward`). ``(1,)``: the plain
            single-scale vectors. Recorded in the file's ``scales`` and ``scale_power``.
        compile: run the network through ``torch.compile`` (one compilation per input
            shape; see :mod:`raml_cli.model.inference`).

    Raises:
        DataError: an unreadable image without ``skip_bad`` (the ``.partial`` file is kept
            for ``--resume``).
        InputError, FormatError: bad options, model file or unfinished file.
    """
    from raml_cli.distributed import init_distributed, shutdown_distributed
    from raml_cli.model.files import load_model

    reporter = reporter or NULL_REPORTER
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    if not samples:
        raise InputError("There are no images to embed (the split or image list is empty).")
    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise InputError(f"--chunk-rows must be between 1 and {MAX_CHUNK_ROWS}, got "
                         f"{chunk_rows}.")
    _check_output_apart(output, model, samples, Path(root), inputs or {})
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    setup = init_distributed(device)
    try:
        return _embed(load_model, model, output, list(samples), Path(root), setup,
                      dataset=dataset, split=split, res=res, batch_size=batch_size,
                      workers=workers, resume=resume, skip_bad=skip_bad,
                      chunk_rows=chunk_rows, reporter=reporter if setup.rank == 0
                      else NULL_REPORTER, scales=tuple(float(v) for v in scales),
                      scale_power=float(scale_power), compile=compile)
    finally:
        if setup.distributed and not already:
            shutdown_distributed()


def _check_output_apart(output: str | os.PathLike, model: str | os.PathLike,
                        samples: Sequence[Sample], root: Path,
                        inputs: dict[str, str | os.PathLike]) -> None:
    """Refuse an output that is the model, another input or one of the images."""
    check_outputs_apart({"the embeddings file (-o)": output,
                         "its unfinished file": partial_path(output)},
                        {"the model file": model, **inputs})
    target = Path(output).resolve()
    if target.is_relative_to(root.resolve()):
        relative = target.relative_to(root.resolve()).as_posix()
        if any(sample.path == relative for sample in samples):
            raise InputError(f"The embeddings file (-o) {output} is one of the images to "
                             "embed; writing it would destroy that image. Choose an output "
                             "path outside the image folder.")


def _embed(load_model: Any, model: str | os.PathLike, output: str | os.PathLike,
           samples: list[Sample], root: Path, setup: Any, *, dataset: str, split: str,
           res: int | None, batch_size: int, workers: int | None, resume: bool,
           skip_bad: bool, chunk_rows: int, reporter: Reporter,
           scales: tuple[float, ...] = SINGLE_SCALE, scale_power: float = 1.0,
           compile: bool = False) -> EmbedResult:
    from raml_cli.distributed import barrier, broadcast_object

    device, rank, world = setup.device, setup.rank, setup.world_size
    network, info = load_model(model, device)
    network = prepare_for_inference(network, device, copy=False, compile=compile)
    res = check_resolution_range(int(res or info.resolution))
    scales = check_scales(scales, res, scale_power)
    workers = default_workers(device) if workers is None else int(workers)
    attrs = {"model_sha256": info.sha256, "role": info.role, "architecture": info.architecture,
             "resolution": res, "dataset": dataset, "split": split, "scales": list(scales),
             "scale_power": float(scale_power)}

    writer = None
    start, problem = 0, None
    if rank == 0:
        try:
            writer, start = _open_writer(output, network.embedding_dim, attrs, chunk_rows,
                                         resume, samples, reporter)
        except RamlError as err:
            problem = err
    start, message = broadcast_object((start, None if problem is None else str(problem)))
    if problem is not None:
        raise problem
    if message is not None:
        raise InputError(message)

    dataset_ = ImageDataset(root, samples, eval_transform(res, info.mean, info.std),
                            skip_bad=True)
    rounds = _rounds(start, len(samples), batch_size, world, rank)
    per_flush = max(1, math.ceil(chunk_rows / (world * batch_size)))
    loader = iter(_loader(dataset_, [b for b in rounds if b], workers, device))
    skipped_total: list[str] = writer.skipped if writer is not None else []
    pending: list[tuple[np.ndarray, np.ndarray, list[int], list[tuple[int, BadImage]]]] = []
    started = time.perf_counter()
    done = 0
    try:
        with torch.inference_mode(), \
                reporter.track("embedding", len(samples) - start, "img") as bar:
            for number, share in enumerate(rounds):
                batch: Batch | None = next(loader) if share else None
                part = _compute(network, batch, device, scales, scale_power)
                parts = _gather(part, world)
                bad = [item for p in parts for item in p[3]]
                if bad and not skip_bad:
                    raise DataError(bad[0][1].reason)
                pending.extend(parts)
                done += sum(len(p[2]) + len(p[3]) for p in parts)
                if writer is not None and (len(pending) >= per_flush * world
                                           or number == len(rounds) - 1):
                    _flush(writer, pending, samples, skipped_total, reporter)
                    pending = []
                bar.advance(sum(len(p[2]) + len(p[3]) for p in parts))
                elapsed = time.perf_counter() - started
                if elapsed > 0:
                    bar.update(img_s=done / elapsed)
        seconds = time.perf_counter() - started
        if writer is not None:
            writer.finalize()
    except BaseException:
        if writer is not None:
            writer.close()
            if writer.partial.exists():
                reporter.warn(f"stopped; the rows done so far are kept in {writer.partial}: "
                              "run the same command with --resume to continue.")
        raise
    # Decoding workers forked while the file was open hold its HDF5 lock: end them first.
    loader = None
    space = None
    if writer is not None and writer.rows_done:  # read back in blocks: bounded memory
        space = spread_from_blocks(lambda: iter_embedding_blocks(output), writer.rows_done)
    barrier()
    num_rows = (writer.rows_done if writer is not None else 0)
    return EmbedResult(
        output=Path(output), num_images=len(samples), num_rows=num_rows,
        dim=network.embedding_dim, resolution=res, model_sha256=info.sha256, role=info.role,
        architecture=info.architecture, dataset=dataset, split=split, device=str(device),
        batch_size=batch_size, workers=workers, world_size=world, scales=list(scales),
        scale_power=scale_power, resumed_from=start,
        skipped=list(skipped_total), seconds=seconds,
        images_per_second=(len(samples) - start) / seconds if seconds > 0 else 0.0, rank=rank,
        space=space)


def _open_writer(output: str | os.PathLike, dim: int, attrs: dict, chunk_rows: int,
                 resume: bool, samples: list[Sample], reporter: Reporter) -> tuple[Any, int]:
    from raml_cli.store import EmbeddingWriter

    partial = partial_path(output)
    if not resume and partial.exists():
        reporter.warn(f"an unfinished {partial} exists; starting over (use --resume to "
                      "continue it instead).")
    if resume and not partial.exists():
        reporter.log(f"nothing to resume ({partial} does not exist): starting from the first "
                     "image.")
    writer = EmbeddingWriter(output, dim=dim, attrs=attrs, chunk_rows=chunk_rows,
                             resume=resume)
    start = 0
    if writer.rows_done or writer.skipped:
        try:
            start, lost = resume_position(samples, writer.written_paths(), writer.skipped)
        except RamlError:
            writer.close()
            raise
        writer.add_skipped(lost)
        reporter.log(f"resuming {partial}: {start} of {len(samples)} images already done.")
    return writer, start


def _compute(network: nn.Module, batch: Batch | None, device: torch.device,
             scales: tuple[float, ...] = SINGLE_SCALE, power: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[int, BadImage]]]:
    """Rows, labels and input indices of a batch's good images, and its bad ones."""
    if batch is None or batch.images is None:
        dim = network.embedding_dim
        empty = np.empty((0, dim), dtype=np.float32)
        bad = batch.bad if batch is not None else []
        return empty, np.empty((0,), dtype=np.int64), [], bad
    rows = _forward(network, batch.images, device, network.inference.channels_last, True,
                    scales, power).cpu().numpy()
    return rows, batch.labels.numpy(), batch.indices.tolist(), batch.bad


def _gather(part: tuple, world: int) -> list[tuple]:
    """Every rank's part of a round, in rank order (= input order); ``[part]`` alone."""
    if world == 1:
        return [part]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, part)
    return parts


def _flush(writer: Any, pending: list[tuple], samples: list[Sample],
           skipped_total: list[str], reporter: Reporter) -> None:
    """Append the rows of whole rounds, then record their skipped inputs."""
    rows = [p[0] for p in pending if len(p[2])]
    if rows:
        indices = [i for p in pending for i in p[2]]
        writer.append(np.concatenate(rows), np.concatenate([p[1] for p in pending if len(p[2])]),
                      [samples[i].path for i in indices])
    bad = sorted((index, item) for p in pending for index, item in p[3])
    if bad:
        paths = [samples[index].path for index, _ in bad]
        for _, item in bad:
            reporter.warn(f"skipped {item.path}: {item.reason.split('. ')[0]}.")
        writer.add_skipped(paths)
        skipped_total.extend(paths)
