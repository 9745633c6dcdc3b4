"""Teacher training: label-supervised metric learning at the database resolution.

METHOD.md, "Teacher training". Per epoch:

1. :class:`~raml_cli.train.sampler.ClassBalancedSampler` plans the anchors: micro-batches
   of ``batch_size`` images in groups of ``samples_per_class`` images of one class,
   ``images_per_epoch`` anchors in all (reference: 2000, like the reference's
   "query size").
2. A *pool* of ``pool_size`` random training images (reference: 20000, bounded by the
   split) and the epoch's anchors are embedded with the current network (evaluation
   transform at ``res``, eval mode, no gradients). For every anchor, ``negatives``
   images of other classes are drawn from the pool by distance-weighted sampling
   (:func:`~raml_cli.train.mining.sample_negatives`).
3. Each micro-batch forwards its anchors and their negatives (random resized crop +
   flip at ``res``) through the network; each anchor is paired with every other
   anchor of its class in the micro-batch as positive (``positives="all"``, the
   reference code's choice; ``"hardest"`` keeps only the least similar one, which
   with hard negatives collapses a pretrained network's space); the loss is the
   triplet loss on squared distances (:class:`~raml_cli.train.losses.TripletLoss`)
   averaged over the ``batch_size * (samples_per_class - 1) * negatives`` triplets.

The network keeps BatchNorm statistics frozen (from random weights, ``init="none"``,
they are first measured on 256 training images: the default statistics of a random
network describe no real activations, and frozen as they are the embeddings
collapse to one point); AdamW with GeM's ``p`` at 10x the
learning rate and no weight decay; a one-cycle schedule (the shared loop,
:mod:`raml_cli.train.loop`). With ``val_every > 0`` the run trains on ``fit`` (=
``train`` minus ``val``) and reports symmetric R@1 and mAP on ``val`` (queries and
database: the ``val`` images at ``res``, each query excluded from its own ranking);
otherwise it trains on all of ``train``. The *last* model is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from raml_cli.errors import DataError, InputError, TrainingError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.train.loop import (
    LoopConfig,
    LoopContext,
    LossOutput,
    TrainingResult,
    TrainingTask,
    run_training,
)

#: Reference hyper-parameters per dataset (``--preset paper``): ResNet-50, GeM, whitening
#: 512, 448 px, ImageNet initialisation. Where METHOD.md and the reference code give no
#: value for teacher training (epochs, learning rate, batch size), the choice is ours and
#: marked in docs/train.md.
PAPER_PRESETS: dict[str, dict[str, Any]] = {
    name: {
        "arch": "resnet50", "pool": "gem", "dim": 512, "init": "pretrained", "res": 448,
        "epochs": 100, "lr": 1e-4, "weight_decay": 1e-6, "samples_per_class": 4,
        "negatives": 4, "margin": 0.7, "batch_size": 20, "accumulate": 1,
        "images_per_epoch": 2000, "pool_size": 20000, "seed": 1234,
    }
    for name in ("cub200", "cars196", "sop")
}

#: Training images whose activations set the BatchNorm statistics of a random init.
CALIBRATION_IMAGES = 256

#: The collapse warning: an epoch loss within this fraction of the margin ...
PLATEAU_TOLERANCE = 0.05
#: ... for this many consecutive epochs.
PLATEAU_EPOCHS = 2

#: Options that do not change what is computed (so a run may resume with other values).
_RUNTIME_OPTIONS = ("output", "root", "workers", "device", "resume", "checkpoint_every",
                    "embed_batch_size", "threads", "preset")


@dataclass
class TeacherConfig:
    """Every option of ``raml train-teacher`` (defaults: the reference's where it has one).

    Attributes:
        dataset: a catalogue name or the path of the user's data.
        output: the model file to write (checkpoint and log go beside it).
        root: the folder holding the catalogue's datasets.
        arch: backbone name (timm, or ``torchvision/<name>``).
        pool: ``gem``, ``mac`` or ``spoc``.
        dim: whitening output size (0: no whitening).
        whitening_init: ``pca`` (the centred PCA whitening of pooled, L2-normalised
            descriptors of a seeded sample of training images; see
            :mod:`raml_cli.model.whitening`) or ``random`` (the layer's random init).
        init: ``pretrained`` (ImageNet weights), ``none`` (random) or a weights file path.
        res: training resolution in pixels (square crops).
        epochs: epochs of ``images_per_epoch`` anchors.
        lr: peak learning rate of the one-cycle schedule (GeM's p: 10x).
        weight_decay: AdamW weight decay (none for GeM's p).
        samples_per_class: images per class that sit together in a micro-batch.
        negatives: negatives drawn per anchor.
        positives: ``all`` (each anchor with every other image of its class in the
            micro-batch, as the reference code does) or ``hardest`` (only the least
            similar one; with hard negatives it collapses the space).
        margin: triplet margin (squared distances, in [0, 4]).
        batch_size: anchors per micro-batch (a forward pass holds
            ``batch_size * (1 + negatives)`` images).
        accumulate: micro-batches per optimiser step.
        images_per_epoch: anchors per epoch (0: every image of the split in whole groups).
        pool_size: images embedded each epoch to draw negatives from (bounded by the split).
        workers: DataLoader worker processes.
        seed: the run's seed.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        val_every: validate on ``val`` every N epochs (0: never; then train on ``train``).
        checkpoint_every: also checkpoint every N optimiser steps (0: each epoch only).
        resume: continue the run whose checkpoint lies beside ``output``.
        embed_batch_size: images per forward pass when embedding the pool and ``val``.
        threads: CPU threads for PyTorch (None: leave as is).
        preset: ``paper`` when the reference's values were applied (recorded only).
    """

    dataset: str
    output: Path = Path("teacher.safetensors")
    root: Path = Path("data")
    arch: str = "resnet50"
    pool: str = "gem"
    dim: int = 512
    whitening_init: str = "pca"
    init: str = "pretrained"
    res: int = 448
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-6
    samples_per_class: int = 4
    negatives: int = 4
    positives: str = "all"
    margin: float = 0.7
    batch_size: int = 20
    accumulate: int = 1
    images_per_epoch: int = 2000
    pool_size: int = 20000
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    val_every: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    embed_batch_size: int = 64
    threads: int | None = None
    preset: str | None = None

    @classmethod
    def from_options(cls, dataset: str, preset: str | None = None,
                     **given: Any) -> TeacherConfig:
        """Build a config: defaults, then the preset's values, then the options ``given``.

        ``given`` holds only options the user set (``None`` values are ignored), so a
        preset never overrides an explicit option.

        Raises:
            InputError: an unknown preset, or ``paper`` for a dataset it does not cover.
        """
        values: dict[str, Any] = {}
        if preset is not None:
            if preset != "paper":
                raise InputError(f"Unknown preset {preset!r}. Choose: paper.")
            if dataset not in PAPER_PRESETS:
                raise InputError(
                    f"--preset paper has the reference's values for "
                    f"{', '.join(PAPER_PRESETS)}, not for {dataset!r}. Drop --preset and set "
                    "the options yourself."
                )
            values.update(PAPER_PRESETS[dataset])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown TeacherConfig option(s): {', '.join(unknown)}")
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(dataset=dataset, preset=preset, **values)

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-able (what the model file's ``config`` records)."""
        out = asdict(self)
        out["output"] = str(self.output)
        out["root"] = str(self.root)
        out["init"] = str(self.init)
        return out

    def check(self) -> None:
        """Reject option values that cannot work, before any work is done."""
        rules = [
            (self.res >= 8, f"--res must be at least 8 pixels, got {self.res}."),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}."),
            (self.negatives >= 1, f"--negatives must be at least 1, got {self.negatives}."),
            (self.margin >= 0, f"--margin must be >= 0, got {self.margin}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.pool_size >= 1, f"--pool-size must be at least 1, got {self.pool_size}."),
            (self.dim >= 0, f"--dim must be 0 (no whitening) or positive, got {self.dim}."),
            (self.embed_batch_size >= 1, "embed_batch_size must be at least 1."),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)
        from raml_cli.model.whitening import check_whitening_init
        from raml_cli.train.mining import POSITIVE_CHOICES

        self.whitening_init = check_whitening_init(self.whitening_init)
        if str(self.positives).strip().lower() not in POSITIVE_CHOICES:
            raise InputError(f"Unknown --positives {self.positives!r}. Choose one of: "
                             f"{', '.join(POSITIVE_CHOICES)} (all: each anchor with every "
                             "other image of its class in the batch, the default; hardest: "
                             "only the least similar one).")
        self.positives = str(self.positives).strip().lower()


class TeacherTask(TrainingTask):
    """Triplet-loss training of an :class:`~raml_cli.model.network.EmbeddingNetwork`."""

    role = "teacher"

    def __init__(self, config: TeacherConfig, reporter: Reporter = NULL_REPORTER) -> None:
        self.config = config
        self.reporter = reporter
        self.plan_epoch = -1
        self.plan = torch.zeros((0, 0), dtype=torch.int64)  # [micro-batches, batch_size]
        self.plan_negatives = torch.zeros((0, 0), dtype=torch.int64)  # [anchors, negatives]
        self.loader: Any = None  # made on first use: its workers live as long as the task
        self.epoch_losses: list[float] = []  # this rank's mean loss of each finished epoch
        self._loss_sum: torch.Tensor | float = 0.0
        self._loss_count = 0
        self._warned_plateau = False

    # -- set-up ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        options = self.config.to_dict()
        return {k: v for k, v in options.items() if k not in _RUNTIME_OPTIONS}

    def build(self, ctx: LoopContext) -> nn.Module:
        from raml_cli.data.catalog import load_dataset
        from raml_cli.data.images import ImageDataset
        from raml_cli.data.transforms import eval_transform, train_transform
        from raml_cli.model.network import NetworkConfig, build_network
        from raml_cli.train.losses import build_loss
        from raml_cli.train.sampler import ClassBalancedSampler, SeededDataset, epoch_generator

        cfg = self.config
        splits = load_dataset(cfg.dataset, Path(cfg.root))
        self.dataset_name = splits.name
        self.image_root = Path(splits.root)
        self.train_split = "fit" if cfg.val_every else "train"
        self.samples = splits.split(self.train_split)
        self.val_samples = splits.split("val") if cfg.val_every else []
        if cfg.val_every and len({s.label for s in self.val_samples}) < 2:
            raise DataError(
                f"--val-every needs a val split of at least 2 classes, but {splits.name} has "
                f"{len({s.label for s in self.val_samples})}. Use --val-every 0 to train on "
                "the whole train split without validation."
            )
        if not self.samples:
            raise DataError(f"The {self.train_split} split of {splits.name} holds no image.")
        self.labels = np.asarray([s.label for s in self.samples], dtype=np.int64)
        self.sampler = ClassBalancedSampler(self.labels, cfg.samples_per_class, cfg.batch_size,
                                            cfg.images_per_epoch)
        self.sampler.check_fits(ctx.world_size)
        if self.sampler.dropped_classes:
            ctx.reporter.warn(
                f"{len(self.sampler.dropped_classes)} class(es) of the {self.train_split} split "
                f"have fewer than --samples-per-class {cfg.samples_per_class} images and are "
                "not used as anchors (they can still be negatives)."
            )
        init = cfg.init if cfg.init in ("none", "pretrained") else Path(cfg.init)
        network = build_network(NetworkConfig(cfg.arch, pooling=cfg.pool, whitening=cfg.dim),
                                init=init, reporter=ctx.reporter)
        check_resolution(network, cfg.res, cfg.arch)
        mean, std = network.config.mean, network.config.std
        self.train_images = SeededDataset(ImageDataset(self.image_root, self.samples,
                                                       train_transform(cfg.res, mean, std)))
        self.eval_tf = eval_transform(cfg.res, mean, std)
        network = network.to(ctx.device)
        if cfg.init == "none":
            # Random weights come with BatchNorm statistics (mean 0, variance 1) that do not
            # describe any real activations; frozen as they are, the embeddings collapse to
            # one point. Measure them once on training images, then keep them frozen.
            rng = epoch_generator(ctx.seed, 0, "calibrate")
            chosen = rng.permutation(len(self.samples))[:CALIBRATION_IMAGES]
            images = ImageDataset(self.image_root, [self.samples[int(i)] for i in chosen],
                                  self.eval_tf)
            loader = ctx.data_loader(images, [list(range(i, min(i + cfg.embed_batch_size,
                                                                len(images))))
                                              for i in range(0, len(images),
                                                             cfg.embed_batch_size)])
            count = calibrate_batchnorm(network, (batch[0] for batch in loader), ctx)
            if count:
                ctx.reporter.log(f"random init: BatchNorm statistics of {count} layer(s) "
                                 f"measured on {len(images)} training images, then frozen")
        if network.whitening is not None and cfg.whitening_init == "pca":
            self._init_whitening(network, ctx)
        self.loss = build_loss("triplet", margin=cfg.margin)
        ctx.reporter.log(
            f"teacher: {cfg.arch} ({cfg.pool}, dim {network.embedding_dim}) at {cfg.res} px on "
            f"{splits.name}/{self.train_split}: {len(self.samples)} images, "
            f"{self.sampler.num_batches(ctx.world_size)} micro-batch(es) of {cfg.batch_size} "
            f"anchors x (1 + {cfg.negatives} negatives) per epoch and process"
        )
        return network

    def _init_whitening(self, network: nn.Module, ctx: LoopContext) -> None:
        """Set the whitening layer to the PCA whitening of a seeded sample's descriptors.

        A random layer keeps the common positive component of post-activation features
        (every vector in one narrow cone) and the triplet loss then collapses the space;
        see :mod:`raml_cli.model.whitening`. Every rank computes the same sample.
        """
        from raml_cli.data.images import ImageDataset
        from raml_cli.model.whitening import PCA_IMAGES, init_whitening_pca, pooled_descriptors
        from raml_cli.train.sampler import epoch_generator

        cfg = self.config
        rng = epoch_generator(ctx.seed, 0, "whitening")
        chosen = np.sort(rng.permutation(len(self.samples))[:PCA_IMAGES])
        images = ImageDataset(self.image_root, [self.samples[int(i)] for i in chosen],
                              self.eval_tf)
        step = cfg.embed_batch_size
        loader = ctx.data_loader(images, [list(range(i, min(i + step, len(images))))
                                          for i in range(0, len(images), step)])
        with ctx.autocast():
            descriptors = pooled_descriptors(network, (batch[0] for batch in loader),
                                             ctx.to_device)
        init_whitening_pca(network, descriptors)
        ctx.reporter.log(f"whitening: PCA of {len(images)} training images' descriptors "
                         f"({network.backbone_dim} -> {network.embedding_dim}, centred)")

    def param_groups(self, module: nn.Module, lr: float,
                     weight_decay: float) -> list[dict[str, Any]]:
        return module.parameter_groups(lr, weight_decay)  # GeM p: 10x lr, no decay

    def batches_per_epoch(self, ctx: LoopContext) -> int:
        return self.sampler.num_batches(ctx.world_size)

    # -- per epoch --------------------------------------------------------------------------

    def begin_epoch(self, epoch: int, module: nn.Module, ctx: LoopContext) -> None:
        """Plan the epoch's anchors and mine their negatives with ``module``."""
        from raml_cli.train.mining import sample_negatives
        from raml_cli.train.sampler import epoch_generator

        self._finish_epoch_loss(ctx)
        cfg = self.config
        plan = np.asarray(self.sampler.epoch_batches(ctx.seed, epoch, ctx.world_size),
                          dtype=np.int64)
        anchors = plan.reshape(-1)
        rng = epoch_generator(ctx.seed, epoch, "pool")
        pool = np.sort(rng.choice(len(self.samples), size=min(cfg.pool_size, len(self.samples)),
                                  replace=False))
        needed = np.union1d(anchors, pool)
        vectors = self._embed_sharded(module, needed, ctx)  # [len(needed), D], CPU float32
        where = {int(i): k for k, i in enumerate(needed)}
        anchor_vecs = vectors[[where[int(i)] for i in anchors]]
        pool_vecs = vectors[[where[int(i)] for i in pool]]
        seed = int(epoch_generator(ctx.seed, epoch, "negatives").integers(0, 2**62))
        picks = sample_negatives(anchor_vecs, torch.from_numpy(self.labels[anchors]),
                                 pool_vecs, torch.from_numpy(self.labels[pool]), cfg.negatives,
                                 torch.Generator().manual_seed(seed))
        self.plan_epoch = epoch
        self.plan = torch.from_numpy(plan)
        self.plan_negatives = torch.from_numpy(pool)[picks]

    def _embed_sharded(self, module: nn.Module, indices: np.ndarray,
                       ctx: LoopContext) -> torch.Tensor:
        """Embed ``samples[indices]`` (eval transform) split across the processes."""
        from raml_cli.distributed import all_gather_rows

        share = [indices[r::ctx.world_size] for r in range(ctx.world_size)]
        if len(share[ctx.rank]):
            mine = self._embed(module, [self.samples[int(i)] for i in share[ctx.rank]], ctx,
                               "mining negatives")
        else:  # more processes than images to embed
            mine = torch.zeros((0, module.embedding_dim), dtype=torch.float32)
        parts = all_gather_rows(mine.to(ctx.device), [len(s) for s in share])
        out = torch.empty((len(indices), mine.shape[1]), dtype=torch.float32)
        for r, part in enumerate(parts):
            out[r::ctx.world_size] = part.float().cpu()
        if not torch.isfinite(out).all():
            kept = (f"The last good checkpoint {ctx.checkpoint} was kept; delete it before "
                    "training again with a lower --lr." if ctx.checkpoint is not None
                    and ctx.checkpoint.exists() else "No checkpoint had been written yet.")
            raise TrainingError(
                "The network gives non-finite embeddings (NaN or inf) at the start of an epoch, "
                "while mining negatives: training diverged, usually because the learning rate "
                f"is too high: try half of it. {kept}"
            )
        return out

    def _embed(self, module: nn.Module, samples: list, ctx: LoopContext,
               description: str) -> torch.Tensor:
        from raml_cli.embed import embed_in_memory

        rows = embed_in_memory(
            module, samples, self.image_root, self.config.res, device=ctx.device,
            batch_size=self.config.embed_batch_size, workers=ctx.workers,
            channels_last=ctx.channels_last, mixed_precision=ctx.mixed_precision,
            reporter=ctx.reporter, description=description,
        )
        return torch.as_tensor(np.asarray(rows, dtype=np.float32))

    def batches(self, epoch: int, start: int, ctx: LoopContext) -> Any:
        """Micro-batches ``(images [B(1+N), 3, r, r], labels [B(1+N)], B)`` of this rank."""
        from raml_cli.train.sampler import ClassBalancedSampler, item_seeds

        if self.plan_epoch != epoch:
            raise RuntimeError(f"epoch {epoch} was not planned (planned: {self.plan_epoch})")
        cfg = self.config
        bs, neg = cfg.batch_size, cfg.negatives
        per_batch = bs * (1 + neg)
        seeds = item_seeds(ctx.seed, epoch, len(self.plan) * per_batch)
        keys = []
        for g, anchors in enumerate(self.plan.tolist()):
            negatives = self.plan_negatives[g * bs:(g + 1) * bs].reshape(-1).tolist()
            images = anchors + negatives
            batch_seeds = seeds[g * per_batch:(g + 1) * per_batch].tolist()
            keys.append(list(zip(images, batch_seeds, strict=True)))
        mine = ClassBalancedSampler.shard(keys, ctx.rank, ctx.world_size)[start:]
        if not mine:
            return iter(())
        if self.loader is None:
            self.loader = ctx.epoch_loader(self.train_images)
        return ((images, labels, bs) for images, labels, _ in self.loader.epoch(mine))

    def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
        from raml_cli.train.mining import hardest_positive, positive_pairs

        images, labels, bs = batch
        with ctx.autocast():
            vectors = model(ctx.to_device(images)).float()
        anchors = vectors[:bs]
        negatives = vectors[bs:].reshape(bs, self.config.negatives, -1)
        anchor_labels = labels[:bs].to(anchors.device)
        if self.config.positives == "hardest":
            positive = hardest_positive(anchors.detach(), anchor_labels)
            rows = torch.nonzero(positive >= 0).flatten()
            positive = positive[rows]
        else:  # every (anchor, positive) pair: B * (samples_per_class - 1) of them
            rows, positive = positive_pairs(anchor_labels)
        loss = self.loss(anchors[rows], anchors[positive], negatives[rows])
        self._loss_sum = self._loss_sum + loss.detach().float()
        self._loss_count += 1
        return LossOutput(loss, int(images.shape[0]))

    def _finish_epoch_loss(self, ctx: LoopContext) -> None:
        """Close the running epoch's loss (if any) and warn when it sits at the margin."""
        if not self._loss_count:
            return
        self.epoch_losses.append(float(self._loss_sum) / self._loss_count)
        self._loss_sum, self._loss_count = 0.0, 0
        if not self._warned_plateau and ctx.is_main and loss_at_margin(
                self.epoch_losses, self.config.margin):
            self._warned_plateau = True
            ctx.reporter.warn(plateau_warning(self.epoch_losses[-PLATEAU_EPOCHS:],
                                              self.config.margin))

    # -- validation, state, output ----------------------------------------------------------

    def validate(self, module: nn.Module, ctx: LoopContext) -> dict[str, float]:
        """Symmetric R@1 and mAP on ``val`` at ``res`` (each query excluded from its ranking)."""
        from raml_cli.evaluate import evaluate_arrays

        vectors = self._embed(module, self.val_samples, ctx, "validating").numpy()
        labels = np.asarray([s.label for s in self.val_samples], dtype=np.int64)
        metrics = evaluate_arrays(vectors, labels, vectors, labels, ks=(1,), exclude_self=True)
        return {"recall@1": float(metrics["recall@1"]), "map": float(metrics["map"])}

    def state_dict(self) -> dict[str, Any]:
        return {"plan_epoch": self.plan_epoch, "plan": self.plan.clone(),
                "plan_negatives": self.plan_negatives.clone(),
                "epoch_losses": list(self.epoch_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan_epoch = int(state["plan_epoch"])
        self.plan = state["plan"].clone()
        self.plan_negatives = state["plan_negatives"].clone()
        self.epoch_losses = [float(v) for v in state.get("epoch_losses", [])]

    def close(self) -> None:
        self.loader = None  # its persistent workers exit with it

    def save(self, module: nn.Module, path: Path, ctx: LoopContext,
             result: TrainingResult) -> None:
        from raml_cli.model.files import save_model

        self._finish_epoch_loss(ctx)
        config = self.config.to_dict()
        config.update({"train_split": self.train_split, "world_size": ctx.world_size})
        save_model(path, module, resolution=self.config.res, role="teacher",
                   dataset=self.dataset_name, config=config)


def loss_at_margin(losses: list[float], margin: float, tolerance: float = PLATEAU_TOLERANCE,
                   epochs: int = PLATEAU_EPOCHS) -> bool:
    """True when each of the last ``epochs`` epoch losses lies within ``tolerance * margin``
    of ``margin``.

    ``margin`` is what every triplet loses when all vectors coincide
    (``|a-p|^2 = |a-n|^2 = 0``): a loss that stays there means the space is collapsing.

    >>> loss_at_margin([0.75, 0.69, 0.67], 0.7)
    True
    >>> loss_at_margin([0.75, 0.5, 0.3], 0.7)
    False
    """
    if margin <= 0 or len(losses) < epochs:
        return False
    return all(abs(loss - margin) <= tolerance * margin for loss in losses[-epochs:])


def plateau_warning(losses: list[float], margin: float) -> str:
    """The one-paragraph warning of :func:`loss_at_margin`."""
    shown = ", ".join(f"{loss:.3f}" for loss in losses)
    return (
        f"The triplet loss stayed within {100 * PLATEAU_TOLERANCE:.0f}% of the margin "
        f"{margin:g} for {len(losses)} epochs ({shown}): that is the loss of triplets whose "
        "vectors all coincide, so the embedding space may be collapsing into a narrow cone "
        "(or the negatives are as near as the positives). Symmetric recall can still look "
        "fine, but asymmetric search (student queries against this teacher's database) "
        "will then fail. Keep the defaults --positives all and "
        "--whitening-init pca if you changed them (the hardest positive against hard "
        "negatives and a random whitening layer collapse a pretrained space), try a lower "
        "--lr, and check the spread of the space with raml embed and raml evaluate."
    )


def calibrate_batchnorm(network: nn.Module, batches: Iterable[torch.Tensor],
                        ctx: LoopContext) -> int:
    """Set every BatchNorm layer's running statistics to their average over ``batches``.

    For a randomly initialised network, whose BatchNorm layers are then kept frozen
    (METHOD.md): the statistics are measured once, with every other layer in eval mode,
    as the cumulative average over the batches (``momentum=None``), and the layers'
    momentum is restored afterwards. ``batches`` yields normalised images
    ``[B, 3, H, W]``. Returns the number of BatchNorm layers calibrated.
    """
    layers = [m for m in network.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return 0
    was_training = network.training
    momenta = [m.momentum for m in layers]
    network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad(), ctx.autocast():
            for images in batches:
                network(ctx.to_device(images))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        network.train(was_training)
    return len(layers)


_PROBE_RESOLUTIONS = (32, 64, 96, 128, 160, 224, 299, 384, 448)


def check_resolution(network: nn.Module, res: int, arch: str) -> None:
    """Raise :class:`InputError` when ``network`` cannot embed a ``res x res`` image.

    Runs one forward pass of a blank image on the CPU (before any training work). On a
    failure, larger resolutions are probed so the message can name one that works.
    """

    def works(size: int) -> str | None:
        try:
            with torch.no_grad():
                out = network(torch.zeros(1, 3, size, size))
            return None if torch.isfinite(out).all() else "non-finite output"
        except (RuntimeError, ValueError, AssertionError) as err:
            return str(err).splitlines()[0] if str(err) else type(err).__name__

    was_training = network.training
    network.eval()
    try:
        problem = works(res)
        if problem is None:
            return
        larger = next((r for r in _PROBE_RESOLUTIONS if r > res and works(r) is None), None)
    finally:
        network.train(was_training)
    if larger is not None:
        raise InputError(
            f"--res {res} is below what {arch} accepts: a {res}x{res} image fails in the "
            f"network ({problem}). Use --res {larger} or more."
        )
    raise InputError(
        f"{arch} fails on a blank {res}x{res} image ({problem}), and at larger resolutions "
        "too: this architecture does not fit raml's embedding network. Choose another --arch "
        "(e.g. resnet50)."
    )


def train_teacher(config: TeacherConfig, reporter: Reporter = NULL_REPORTER) -> Path:
    """Train a teacher as ``config`` says and write it to ``config.output``.

    Returns:
        The model file (``role=teacher``, ``resolution=res``, ``dataset``, every option in
        ``config``); the JSONL log lies beside it.

    >>> # train_teacher(TeacherConfig("toy", res=64, arch="resnet10t", init="none"))
    """
    return train_teacher_result(config, reporter).output


def train_teacher_result(config: TeacherConfig,
                         reporter: Reporter = NULL_REPORTER) -> TrainingResult:
    """Like :func:`train_teacher`, returning the loop's :class:`TrainingResult`."""
    config.check()
    loop = LoopConfig(
        output=Path(config.output), epochs=config.epochs, lr=config.lr,
        weight_decay=config.weight_decay, accumulate=config.accumulate, seed=config.seed,
        device=config.device, workers=config.workers, val_every=config.val_every,
        checkpoint_every=config.checkpoint_every, resume=config.resume,
        threads=config.threads,
    )
    return run_training(TeacherTask(config, reporter), loop, reporter)
