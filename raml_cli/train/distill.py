"""Distillation: a student at the query resolution learns the frozen teacher's vectors.

METHOD.md, "Distillation". The teacher ``T`` (a model file, frozen: eval mode, no
gradients, inference mode, batched) embeds every view at the database resolution
``R``; the student ``S`` (same architecture) embeds the same view at the query
resolution ``r`` and is trained, without labels, so that its vectors live in the
teacher's space. Two modes:

``aug`` (the paper's method)
    Each training image gives ``P`` coupled views (:mod:`raml_cli.data.coupled`: one
    random crop box, flip and colour jitter rendered at ``r`` and at ``R``), mixed up
    with other images' coupled pairs (alpha 0.2). The loss is
    :func:`~raml_cli.train.distill_loss.distillation_loss`: absolute +
    ``lambda1`` teacher-student relational + ``lambda2`` student-student relational,
    summed over the images of a micro-batch. Mixup partners are views of other images of
    the same micro-batch (:func:`~raml_cli.data.coupled.mix_batch`).

``regression`` (the cheaper variant)
    Only the absolute term, ``P = 1``, no augmentation: the student sees the
    evaluation-transformed image at ``r``; the teacher's vectors of the
    evaluation-transformed image at ``R`` are computed once and cached in an
    embeddings file beside the output (``OUT_STEM.teacher-vectors.h5``; reused when
    its teacher hash, resolution and image list match).

Per epoch, ``images_per_epoch`` training images (reference: 2000; bounded by the
split) are drawn at random without replacement and cut into micro-batches of
``batch_size`` images (each with ``P`` views); ``accumulate`` micro-batches make an
optimiser step (reference: 8 images x 8 views, 25 steps of accumulation). The
shared loop (:mod:`raml_cli.train.loop`) does the rest: AdamW (GeM's ``p`` at 10x
the learning rate, no weight decay), one-cycle schedule, checkpoints, ``--resume``,
DDP, the JSONL log.

With ``val_every > 0`` the student trains on ``fit`` (= ``train`` minus ``val``)
and is validated *asymmetrically*: student vectors of the ``val`` images at ``r``
as queries against the teacher's vectors of the same images at ``R`` (each query
excluded from its own ranking); R@1 and mAP. The *last* model is written, with
``role=student``, ``resolution=r`` and ``teacher_sha256``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raml_cli.errors import DataError, InputError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.train.loop import run_training
from raml_cli.train.options import DistillConfig, read_teacher_info
from raml_cli.train.task import LoopContext, LossOutput, TrainingResult, TrainingTask

TEACHER_CACHE_SUFFIX = ".teacher-vectors.h5"


def teacher_cache_path(output: str | Path) -> Path:
    """Where ``regression`` mode caches the teacher's vectors: ``OUT_STEM.teacher-vectors.h5``."""
    out = Path(output)
    return out.with_name(out.stem + TEACHER_CACHE_SUFFIX)


def database_resolution(config: DistillConfig, teacher_info: Any) -> int:
    """``R``: ``--database-res`` when given, else the teacher's training resolution."""
    return int(config.database_res or teacher_info.resolution)


def describe_distillation(config: DistillConfig, teacher_info: Any) -> dict[str, Any]:
    """The options that define a distillation run, with the teacher's defaults resolved.

    What a checkpoint must match to be resumed, and what a student file's ``config`` is
    compared with to decide that it is already trained (``raml demo``).
    """
    described = config.defining_options()
    described.update({"teacher_sha256": teacher_info.sha256,
                      "dataset": config.dataset or teacher_info.dataset,
                      "database_res": database_resolution(config, teacher_info)})
    return described


class DistillTask(TrainingTask):
    """Label-free distillation of a frozen teacher into a student at the query resolution."""

    role = "student"

    def __init__(self, config: DistillConfig, reporter: Reporter = NULL_REPORTER,
                 teacher_info: Any = None) -> None:
        self.config = config
        self.reporter = reporter
        self.info = teacher_info or read_teacher_info(Path(config.teacher))
        if self.info.role != "teacher":
            reporter.warn(f"{config.teacher} is a {self.info.role} model (role={self.info.role}),"
                          " not a teacher; distilling from it anyway.")
        self.teacher_sha256 = self.info.sha256
        self.database_res = database_resolution(config, self.info)
        self.dataset_spec = config.dataset or self.info.dataset
        teacher_root = self.info.config.get("root") if isinstance(self.info.config, dict) else None
        self.root = Path(config.root if config.root is not None else (teacher_root or "data"))
        self.loader: Any = None  # made on first use: its workers live as long as the task
        self.student_arch = config.student_arch or self.info.architecture
        check_student(config, self.info)

    # -- set-up ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return describe_distillation(self.config, self.info)

    def _check_same_teacher(self, sha256: str) -> None:
        # The student records the teacher's sha256: it must be that of the weights used.
        if sha256 != self.teacher_sha256:
            raise InputError(f"The teacher file {self.config.teacher} changed while distill "
                             "was reading it (its sha256 differs from a moment before). Let "
                             "whatever writes it finish, then run again.")

    def build(self, ctx: LoopContext) -> nn.Module:
        from raml_cli.model.files import load_model
        from raml_cli.model.inference import prepare_for_inference
        from raml_cli.model.network import build_network
        from raml_cli.model.resolution import check_resolution
        from raml_cli.train.splits import load_training_splits

        cfg = self.config
        data = load_training_splits(self.dataset_spec, self.root, cfg.val_every)
        self.dataset_name = data.name
        self.image_root = data.image_root
        self.train_split = data.train_split
        self.samples = data.samples
        self.val_samples = data.val_samples
        self.images_per_epoch = min(cfg.images_per_epoch or len(self.samples), len(self.samples))
        if self.images_per_epoch // (cfg.batch_size * ctx.world_size) < 1:
            raise DataError(
                f"An epoch of {self.images_per_epoch} image(s) does not fill one micro-batch of "
                f"--batch-size {cfg.batch_size} per process ({ctx.world_size} process(es)). "
                "Lower --batch-size or use more images."
            )

        teacher, loaded = load_model(cfg.teacher, device=ctx.device)
        self._check_same_teacher(loaded.sha256)
        # The frozen teacher only runs forward: BatchNorm folded, the loop's layout.
        teacher = prepare_for_inference(teacher, ctx.device, copy=False,
                                        channels_last=ctx.channels_last)
        self.teacher = teacher
        check_resolution(teacher, self.database_res, self.info.architecture)
        if cfg.init == "teacher":
            student, loaded = load_model(cfg.teacher)
            self._check_same_teacher(loaded.sha256)
        else:
            init = {"pretrained": "pretrained", "random": "none"}.get(cfg.init,
                                                                      cfg.init_weights)
            student = build_network(student_network_config(self.info, self.student_arch),
                                    init=init, reporter=ctx.reporter)
        student.requires_grad_(True)
        check_resolution(student, cfg.query_res, self.student_arch)
        mean, std = student.config.mean, student.config.std
        self.renormalise = _renormaliser(student.config, teacher.config)
        if cfg.init == "random":
            self._calibrate_batchnorm(student, ctx)

        if cfg.mode == "aug":
            self.train_images = self._coupled_dataset(mean, std)
        else:
            self.train_images = self._regression_dataset(mean, std, ctx)
        ctx.reporter.log(
            f"student: {self.student_arch} (dim {student.embedding_dim}) at {cfg.query_res} px "
            f"from teacher {self.info.architecture} "
            f"({Path(cfg.teacher).name}) at {self.database_res} px ({cfg.mode} mode, init "
            f"{cfg.init}) on {data.name}/{self.train_split}: {self.images_per_epoch} images "
            f"x {cfg.views} view(s) per epoch, micro-batches of {cfg.batch_size} images"
        )
        return student

    def _calibrate_batchnorm(self, student: nn.Module, ctx: LoopContext) -> None:
        """Measure a random init's BatchNorm statistics on training images at ``r``
        (frozen as they come, the student's vectors collapse to one point)."""
        from raml_cli.data.images import ImageDataset
        from raml_cli.data.transforms import eval_transform
        from raml_cli.model.batchnorm import calibrate_batchnorm
        from raml_cli.train.sampler import epoch_generator
        from raml_cli.train.teacher import CALIBRATION_IMAGES

        chosen = epoch_generator(ctx.seed, 0, "calibrate").permutation(len(self.samples))
        samples = [self.samples[int(i)] for i in chosen[:CALIBRATION_IMAGES]]
        images = ImageDataset(self.image_root, samples, eval_transform(
            self.config.query_res, student.config.mean, student.config.std))
        step = self.config.embed_batch_size
        loader = ctx.data_loader(images, [list(range(i, min(i + step, len(images))))
                                          for i in range(0, len(images), step)])
        student.to(ctx.device)
        count = calibrate_batchnorm(student, (batch[0] for batch in loader), ctx.device,
                                    channels_last=ctx.channels_last,
                                    mixed_precision=ctx.mixed_precision)
        if count:
            ctx.reporter.log(f"random init: BatchNorm statistics of {count} layer(s) measured "
                             f"on {len(images)} training images at {self.config.query_res} "
                             "px, then frozen")

    def _coupled_dataset(self, mean: Any, std: Any) -> Any:
        from raml_cli.data.coupled import CoupledAugmentation, CoupledViewsDataset
        from raml_cli.train.sampler import SeededDataset

        cfg = self.config
        augmentation = CoupledAugmentation(cfg.query_res, self.database_res, mean, std)
        return SeededDataset(CoupledViewsDataset(self.image_root, self.samples, augmentation,
                                                 views=cfg.augs, mixup_alpha=cfg.mixup))

    def _regression_dataset(self, mean: Any, std: Any, ctx: LoopContext) -> Any:
        from raml_cli.data.images import ImageDataset
        from raml_cli.data.transforms import eval_transform

        self.teacher_vectors = torch.from_numpy(self._cached_teacher_vectors(ctx))
        return _Keyed(ImageDataset(self.image_root, self.samples,
                                   eval_transform(self.config.query_res, mean, std)))

    def _cached_teacher_vectors(self, ctx: LoopContext) -> np.ndarray:
        """The teacher's vectors of the training images at ``R``, from (or into) the cache."""
        from raml_cli.distributed import barrier
        from raml_cli.store import is_current, read_embeddings, write_embeddings

        cache = teacher_cache_path(self.config.output)
        paths = [s.path for s in self.samples]
        if is_current(cache, model_sha256=self.teacher_sha256, resolution=self.database_res,
                      paths=paths):
            ctx.reporter.log(f"teacher vectors: reusing {cache}")
            return read_embeddings(cache).embeddings
        if ctx.is_main:
            vectors = self._embed(self.teacher, self.samples, self.database_res, ctx,
                                  "teacher vectors")
            write_embeddings(cache, vectors, [s.label for s in self.samples], paths, attrs={
                "model_sha256": self.teacher_sha256, "role": "teacher",
                "architecture": self.info.architecture, "resolution": self.database_res,
                "dataset": self.dataset_name, "split": self.train_split,
            })
        barrier()
        return read_embeddings(cache).embeddings

    def _embed(self, network: nn.Module, samples: list, res: int, ctx: LoopContext,
               description: str) -> np.ndarray:
        from raml_cli.embed import embed_in_memory

        return embed_in_memory(
            network, samples, self.image_root, res, device=ctx.device,
            batch_size=self.config.embed_batch_size, workers=ctx.workers,
            channels_last=ctx.channels_last, mixed_precision=ctx.mixed_precision,
            reporter=ctx.reporter, description=description,
        )

    def param_groups(self, module: nn.Module, lr: float,
                     weight_decay: float) -> list[dict[str, Any]]:
        return module.parameter_groups(lr, weight_decay)  # GeM p: 10x lr, no decay

    def batches_per_epoch(self, ctx: LoopContext) -> int:
        return self.images_per_epoch // (self.config.batch_size * ctx.world_size)

    # -- per epoch --------------------------------------------------------------------------

    def batches(self, epoch: int, start: int, ctx: LoopContext) -> Any:
        """This rank's micro-batches from ``start``: ``(low, high or teacher vectors)``.

        ``aug``: ``(low [B, P, 3, r, r], high [B, P, 3, R, R], mixup plan [B, P, 3])``;
        ``regression``: ``(low [B, 1, 3, r, r], cached teacher vectors [B, 1, D], None)``.
        """
        from raml_cli.train.sampler import ClassBalancedSampler, epoch_generator, item_seeds

        bs = self.config.batch_size
        per_rank = self.batches_per_epoch(ctx)
        total = per_rank * ctx.world_size
        order = epoch_generator(ctx.seed, epoch, "batches").permutation(len(self.samples))
        order = order[: total * bs].tolist()
        seeds = item_seeds(ctx.seed, epoch, total * bs).tolist()
        keys = [list(zip(order[g * bs:(g + 1) * bs], seeds[g * bs:(g + 1) * bs], strict=True))
                for g in range(total)]
        mine = ClassBalancedSampler.shard(keys, ctx.rank, ctx.world_size)[start:]
        if not mine:
            return iter(())
        if self.loader is None:  # one loader for the run: its workers start once
            self.loader = ctx.epoch_loader(self.train_images)
        loader = self.loader.epoch(mine)
        if self.config.mode == "aug":
            return ((low, high, plan) for low, high, plan, _ in loader)
        return ((images[:, None], self.teacher_vectors[indices][:, None], None)
                for images, _, indices in loader)

    def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
        from raml_cli.data.coupled import mix_batch
        from raml_cli.train.distill_loss import distillation_loss

        low, high, plan = batch
        images, views = int(low.shape[0]), int(low.shape[1])
        if self.config.mode == "aug":
            if self.config.mixup > 0:
                low, high = mix_batch(low, high, plan)
            teacher_vectors = self.teacher_embed(self.renormalise(high.flatten(0, 1)), ctx)
        else:
            teacher_vectors = high.flatten(0, 1).to(ctx.device)
        with ctx.autocast():
            student_vectors = model(ctx.to_device(low.flatten(0, 1))).float()
        shape = (images, views, -1)
        out = distillation_loss(student_vectors.reshape(shape), teacher_vectors.reshape(shape),
                                self.config.lambda1, self.config.lambda2)
        logs = {"loss_abs": out.absolute / images, "loss_ts": out.teacher_student / images,
                "loss_ss": out.student_student / images}
        return LossOutput(out.total, images * views, logs)

    def teacher_embed(self, images: torch.Tensor, ctx: LoopContext) -> torch.Tensor:
        """The frozen teacher's unit vectors ``[N, D]`` of normalised images ``[N, 3, R, R]``.

        Eval mode, inference mode, in chunks of ``embed_batch_size`` views; the result is
        a plain tensor (usable in the loss) that carries no gradient.
        """
        chunk = max(self.config.embed_batch_size, 1)
        parts = []
        with torch.inference_mode(), ctx.autocast():
            for start in range(0, images.shape[0], chunk):
                parts.append(self.teacher(ctx.to_device(images[start:start + chunk])).float())
        return torch.cat(parts).clone()

    # -- validation, output -----------------------------------------------------------------

    def validate(self, module: nn.Module, ctx: LoopContext) -> dict[str, float]:
        """Asymmetric R@1 and mAP on ``val``: student at ``r`` vs teacher at ``R``; the
        spread of the student's query vectors (``mean_cosine``, ``nn_cosine``) and of the
        teacher's database (``database_mean_cosine``, measured once), with a warning
        when collapsed (:mod:`raml_cli.evaluate.space`)."""
        from raml_cli.evaluate import evaluate_arrays
        from raml_cli.evaluate.space import collapse_warning, space_spread

        if getattr(self, "_val_database", None) is None:
            self._val_database = self._embed(self.teacher, self.val_samples, self.database_res,
                                             ctx, "validation database (teacher)")
            database = space_spread(self._val_database)
            self._val_database_mean_cosine = database.mean_cosine
            if database.collapsed:
                ctx.reporter.warn(collapse_warning("the teacher's validation database", database))
        queries = self._embed(module, self.val_samples, self.config.query_res, ctx,
                              "validating (student)")
        labels = np.asarray([s.label for s in self.val_samples], dtype=np.int64)
        metrics = evaluate_arrays(queries, labels, self._val_database, labels, ks=(1,),
                                  exclude_self=True)
        spread = space_spread(queries)
        if spread.collapsed:
            ctx.reporter.warn(collapse_warning("the student's validation queries", spread))
        return {"recall@1": float(metrics["recall@1"]), "map": float(metrics["map"]),
                "map@r": float(metrics["map@r"]),
                "mean_cosine": spread.mean_cosine, "nn_cosine": spread.nn_cosine,
                "database_mean_cosine": self._val_database_mean_cosine}

    def save(self, module: nn.Module, path: Path, ctx: LoopContext,
             result: TrainingResult) -> None:
        from raml_cli.model.files import save_model

        config = self.config.to_dict()
        config.update({"teacher_architecture": self.info.architecture,
                       "dataset": self.dataset_spec, "root": str(self.root),
                       "database_res": self.database_res, "train_split": self.train_split,
                       "world_size": ctx.world_size})
        config["kept"] = result.kept  # which epoch's model this is, and its validation
        save_model(path, module, resolution=self.config.query_res, role="student",
                   dataset=self.dataset_name, config=config, teacher_sha256=self.teacher_sha256)

    def close(self) -> None:
        self.loader = None  # its persistent workers exit with it


def check_student(config: DistillConfig, teacher_info: Any) -> None:
    """Reject a student that cannot start: an unknown ``student_arch``, or ``init
    teacher`` for an architecture other than the teacher's (nothing to copy from)."""
    from raml_cli.errors import InputError
    from raml_cli.model.backbone import check_architecture

    arch = config.student_arch or teacher_info.architecture
    if arch != teacher_info.architecture:
        check_architecture(arch)
        if config.init == "teacher":
            raise InputError(
                f"--init teacher copies the teacher's weights, so it needs the teacher's "
                f"architecture ({teacher_info.architecture}); the student is {arch}. Use "
                "--init pretrained (ImageNet weights of the student's architecture), --init "
                "random, or --init-weights FILE.")


def student_network_config(teacher_info: Any, student_arch: str) -> Any:
    """The student's :class:`~raml_cli.model.network.NetworkConfig`.

    The teacher's own for the same architecture. Another architecture keeps the
    teacher's pooling, takes its own input normalisation and ends with a whitening layer
    of the teacher's embedding size, so that its vectors live in the teacher's space:
    always when the teacher has a whitening layer, else when its backbone width differs
    from the teacher's embedding size.
    """
    from raml_cli.model.backbone import create_backbone
    from raml_cli.model.network import NetworkConfig

    if student_arch == teacher_info.architecture:
        return teacher_info.network_config()
    dim = int(teacher_info.embedding_dim)
    whitening = dim
    if not teacher_info.whitening and create_backbone(student_arch).num_features == dim:
        whitening = 0
    return NetworkConfig(student_arch, pooling=teacher_info.pooling, whitening=whitening)


def _renormaliser(student: Any, teacher: Any) -> Any:
    """Images normalised with the student's mean/std -> with the teacher's (identity when
    they agree): coupled views are rendered once, for both networks."""
    if tuple(student.mean) == tuple(teacher.mean) and tuple(student.std) == tuple(teacher.std):
        return lambda images: images

    def shift(a: Any) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1)

    scale = shift(student.std) / shift(teacher.std)
    offset = (shift(student.mean) - shift(teacher.mean)) / shift(teacher.std)
    return lambda images: images * scale.to(images.dtype) + offset.to(images.dtype)


class _Keyed:
    """Accept the ``(index, seed)`` keys of the shared batch plan for a deterministic dataset."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.dataset[int(key[0])]


def distill(config: DistillConfig, reporter: Reporter = NULL_REPORTER,
            teacher_info: Any = None) -> Path:
    """Distil ``config.teacher`` into a student at ``config.query_res``; returns the file.

    The student file records ``role=student``, ``resolution=query_res``,
    ``teacher_sha256`` and every option in ``config``; the JSONL log lies beside it.

    >>> # distill(DistillConfig(Path("teacher.safetensors"), query_res=64))
    """
    return distill_result(config, reporter, teacher_info).output


def distill_result(config: DistillConfig, reporter: Reporter = NULL_REPORTER,
                   teacher_info: Any = None, on_validation: Any = None) -> TrainingResult:
    """Like :func:`distill`, returning the loop's :class:`TrainingResult`.

    ``teacher_info``: the teacher's :class:`~raml_cli.model.files.ModelInfo` when the
    caller has read it already (it is read, and the file hashed, otherwise).
    ``on_validation``: the loop's hook, called with ``(epoch, metrics)`` after each
    validation (:class:`~raml_cli.train.loop.LoopConfig`).
    """
    config.check()
    task = DistillTask(config, reporter, teacher_info)
    if task.database_res < config.query_res:
        reporter.warn(f"The query resolution {config.query_res} is above the database "
                      f"resolution {task.database_res}: RAML is meant for small queries.")
    loop = config.loop_config()
    loop.on_validation = on_validation
    return run_training(task, loop, reporter)


__all__ = ["DistillConfig", "DistillTask", "check_student", "describe_distillation", "distill",
           "distill_result", "student_network_config", "teacher_cache_path"]
