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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raml_cli.errors import TrainingError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.train.loop import run_training
from raml_cli.train.options import TeacherConfig
from raml_cli.train.task import LoopContext, LossOutput, TrainingResult, TrainingTask

#: Training images whose activations set the BatchNorm statistics of a random init.
CALIBRATION_IMAGES = 256

#: The collapse warning: an epoch loss within this fraction of the margin ...
PLATEAU_TOLERANCE = 0.05
#: ... for this many consecutive epochs.
PLATEAU_EPOCHS = 2


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
        return self.config.defining_options()

    def build(self, ctx: LoopContext) -> nn.Module:
        from raml_cli.data.images import ImageDataset
        from raml_cli.data.transforms import eval_transform, train_transform
        from raml_cli.model.batchnorm import calibrate_batchnorm
        from raml_cli.model.network import NetworkConfig, build_network
        from raml_cli.model.resolution import check_resolution
        from raml_cli.train.losses import build_loss
        from raml_cli.train.sampler import ClassBalancedSampler, SeededDataset, epoch_generator
        from raml_cli.train.splits import load_training_splits

        cfg = self.config
        data = load_training_splits(cfg.dataset, Path(cfg.root), cfg.val_every)
        self.dataset_name = data.name
        self.image_root = data.image_root
        self.train_split = data.train_split
        self.samples = data.samples
        self.val_samples = data.val_samples
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
            count = calibrate_batchnorm(network, (batch[0] for batch in loader), ctx.device,
                                        channels_last=ctx.channels_last,
                                        mixed_precision=ctx.mixed_precision)
            if count:
                ctx.reporter.log(f"random init: BatchNorm statistics of {count} layer(s) "
                                 f"measured on {len(images)} training images, then frozen")
        if network.whitening is not None and cfg.whitening_init == "pca":
            self._init_whitening(network, ctx)
        self.loss = build_loss("triplet", margin=cfg.margin)
        ctx.reporter.log(
            f"teacher: {cfg.arch} ({cfg.pool}, dim {network.embedding_dim}) at {cfg.res} px on "
            f"{data.name}/{self.train_split}: {len(self.samples)} images, "
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
        """Symmetric R@1 and mAP on ``val`` at ``res`` (each query excluded from its ranking),
        and the spread of the val vectors (``mean_cosine``, ``nn_cosine``; a warning when
        collapsed: :mod:`raml_cli.evaluate.space`)."""
        from raml_cli.evaluate import evaluate_arrays
        from raml_cli.evaluate.space import collapse_warning, space_spread

        vectors = self._embed(module, self.val_samples, ctx, "validating").numpy()
        labels = np.asarray([s.label for s in self.val_samples], dtype=np.int64)
        metrics = evaluate_arrays(vectors, labels, vectors, labels, ks=(1,), exclude_self=True)
        spread = space_spread(vectors)
        if spread.collapsed:
            ctx.reporter.warn(collapse_warning("the teacher's validation space", spread))
        return {"recall@1": float(metrics["recall@1"]), "map": float(metrics["map"]),
                "map@r": float(metrics["map@r"]),
                "mean_cosine": spread.mean_cosine, "nn_cosine": spread.nn_cosine}

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
        config["kept"] = result.kept  # which epoch's model this is, and its validation
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


def train_teacher(config: TeacherConfig, reporter: Reporter = NULL_REPORTER) -> Path:
    """Train a teacher as ``config`` says and write it to ``config.output``.

    Returns:
        The model file (``role=teacher``, ``resolution=res``, ``dataset``, every option in
        ``config``); the JSONL log lies beside it.

    >>> # train_teacher(TeacherConfig("toy", res=64, arch="resnet10t", init="none"))
    """
    return train_teacher_result(config, reporter).output


def train_teacher_result(config: TeacherConfig, reporter: Reporter = NULL_REPORTER,
                         on_validation: Any = None) -> TrainingResult:
    """Like :func:`train_teacher`, returning the loop's :class:`TrainingResult`.

    ``on_validation``: the loop's hook, called with ``(epoch, metrics)`` after each
    validation (:class:`~raml_cli.train.loop.LoopConfig`).
    """
    config.check()
    loop = config.loop_config()
    loop.on_validation = on_validation
    return run_training(TeacherTask(config, reporter), loop, reporter)
