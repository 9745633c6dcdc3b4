"""The options every training shares, and how a run's options are put together.

:class:`TrainingOptions` is the base of :class:`~raml_cli.train.teacher.TeacherConfig`
and :class:`~raml_cli.train.distill.DistillConfig`: the loop's options (epochs, learning
rate, weight decay, accumulation, seed, device, workers, validation, checkpoints,
resume), the batch and epoch sizes, where the datasets are, and the one way a run's
options are resolved (:meth:`TrainingOptions.from_options`): the dataclass defaults,
then a preset's values, then the options the user gave. This module imports nothing
heavy, so the command line can read the defaults it shows in ``--help``.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from raml_cli.errors import InputError
from raml_cli.model.limits import MAX_EMBEDDING_DIM, MAX_RESOLUTION

PRESET_NAMES = ("paper",)
#: ``--optimizer`` and ``--scheduler`` (built by :mod:`raml_cli.train.schedule`, which
#: imports torch: the names are repeated here for ``--help``; a test keeps them equal).
OPTIMIZER_CHOICES = ("adamw", "adam", "sgd")
SCHEDULER_CHOICES = ("onecycle", "cyclic", "exponential", "none")
#: ``--keep``: which model the output file holds.
KEEP_CHOICES = ("best", "last")


@dataclass(kw_only=True)
class TrainingOptions:
    """Options of every training (each a keyword; a subclass adds its own).

    Attributes:
        output: the model file to write (the checkpoint and the log go beside it).
        root: the folder holding the catalogue's datasets.
        epochs: number of epochs.
        lr: peak learning rate of the schedule (GeM's p: 10x; one p per channel: 100x).
        weight_decay: the optimiser's weight decay (none for GeM's p).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (:mod:`raml_cli.train.schedule`).
        momentum: SGD's momentum (the other optimisers ignore it).
        scheduler: ``onecycle``, ``cyclic``, ``exponential`` or ``none``.
        batch_size: items per micro-batch (anchors or images, as the training says).
        accumulate: micro-batches per optimiser step.
        images_per_epoch: items per epoch (0: the whole training split).
        workers: DataLoader worker processes.
        seed: the run's seed.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        val_every: validate on ``val`` every N epochs (0: never; then train on ``train``).
        checkpoint_every: also checkpoint every N optimiser steps (0: each epoch only).
        resume: continue the run whose checkpoint lies beside ``output``.
        embed_batch_size: images per forward pass when embedding without gradients
            (mining pools, cached teacher vectors, validation).
        threads: CPU threads for PyTorch (None: leave as is).
        keep: which model the output file holds: ``best`` (the best validation's) or
            ``last``; None: ``best`` when validating, else ``last``.
        patience: stop when this many validations in a row did not improve the best
            (0: never stop early).
        monitor: the validation metric that decides the best model and patience (None:
            the training's own, ``recall@1``).
        tensorboard: also write TensorBoard scalars to this folder (None: no).
        preset: the preset whose values were applied (recorded only).
    """

    output: Path
    root: Path | None = None
    epochs: int = 100
    lr: float
    weight_decay: float = 1e-6
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "onecycle"
    batch_size: int
    accumulate: int
    images_per_epoch: int = 2000
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    val_every: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    embed_batch_size: int = 64
    threads: int | None = None
    keep: str | None = None
    patience: int = 0
    monitor: str | None = None
    tensorboard: Path | None = None
    preset: str | None = None

    #: ``--preset paper``: the reference's values per catalogue dataset.
    PAPER_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Options that do not change what is computed (a run may resume with other values).
    RUNTIME_OPTIONS: ClassVar[tuple[str, ...]] = (
        "output", "root", "workers", "device", "resume", "checkpoint_every",
        "embed_batch_size", "threads", "preset", "tensorboard")

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option's default (what ``--help`` shows; options without one are left out)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def from_options(cls, *required: Any, preset: str | None = None,
                     **given: Any) -> TrainingOptions:
        """Defaults, then the preset's values, then the options ``given``.

        Args:
            required: the values of the options that have no default, in order (a
                teacher's dataset; a student's teacher file and query resolution).
            preset: ``paper`` (the reference's values for the dataset), the path of a JSON
                file holding an object of options (e.g. ``best.json`` of ``raml tune``) or
                ``None``.
            given: the options the user set; ``None`` values are ignored, so a preset
                never overrides an explicit option.

        Raises:
            InputError: an unknown preset, or one without values for the run's dataset.
            TypeError: an option this training does not have (a programming error).
        """
        names = [f.name for f in fields(cls)
                 if f.default is MISSING and f.default_factory is MISSING and not f.kw_only]
        if len(required) != len(names):
            raise TypeError(f"{cls.__name__}.from_options takes {', '.join(names)} first")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
        values = dict(zip(names, required, strict=True))
        if preset is not None:
            values.update(cls.preset_values(preset, {**values, **given}))
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(preset=preset, **values)

    @classmethod
    def preset_values(cls, preset: str, options: dict[str, Any]) -> dict[str, Any]:
        """The values ``preset`` sets for a run with ``options`` (before the user's own)."""
        if preset not in PRESET_NAMES:
            return cls.preset_file_values(Path(preset))
        dataset = cls.preset_dataset(options)
        if dataset not in cls.PAPER_PRESETS:
            raise InputError(
                f"--preset paper has the reference's values for "
                f"{', '.join(cls.PAPER_PRESETS)}, not for {dataset!r}. Drop --preset and set "
                "the options yourself."
            )
        return dict(cls.PAPER_PRESETS[dataset])

    @classmethod
    def preset_dataset(cls, options: dict[str, Any]) -> str | None:
        """The dataset whose preset values apply to a run with ``options``."""
        return options.get("dataset")

    @classmethod
    def preset_file_values(cls, path: Path) -> dict[str, Any]:
        """The options of a preset file: a JSON object ``{"lr": 1.5e-4, ...}``.

        Every key must be an option of this training; the run's required options, its
        output and ``resume`` cannot be preset.
        """
        import json

        if not path.is_file():
            raise InputError(f"Unknown preset {str(path)!r}. Choose: {', '.join(PRESET_NAMES)}, "
                             "or give the path of a JSON file of options (e.g. best.json "
                             "written by `raml tune`).")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"The preset file {path} is not readable JSON ({err}). It must "
                             "hold one JSON object of options, e.g. {\"lr\": 1.5e-4}.") from None
        if not isinstance(values, dict):
            raise InputError(f"The preset file {path} must hold one JSON object of options, "
                             "e.g. {\"lr\": 1.5e-4}.")
        allowed = cls.presettable_options()
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise InputError(f"The preset file {path} sets {', '.join(unknown)}, which "
                             f"{cls.__name__} cannot take from a preset. Allowed: "
                             f"{', '.join(sorted(allowed))}.")
        kinds = {f.name: f.type for f in fields(cls)}
        for key, value in values.items():
            if "Path" in str(kinds[key]) and isinstance(value, str):
                values[key] = Path(value)
        return values

    @classmethod
    def presettable_options(cls) -> set[str]:
        """The options a preset file may set."""
        required = {f.name for f in fields(cls) if f.default is MISSING
                    and f.default_factory is MISSING and not f.kw_only}
        return {f.name for f in fields(cls)} - required - {"output", "resume", "preset"}

    # -- what the run records ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-able (what the model file's ``config`` records)."""
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(self).items()}

    def defining_options(self) -> dict[str, Any]:
        """The options that define what is computed (a resumed run must share them)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_OPTIONS}

    def loop_config(self) -> Any:
        """The :class:`~raml_cli.train.loop.LoopConfig` of this run."""
        from raml_cli.train.loop import LoopConfig

        return LoopConfig(
            output=Path(self.output), epochs=self.epochs, lr=self.lr,
            weight_decay=self.weight_decay, optimizer=self.optimizer, momentum=self.momentum,
            scheduler=self.scheduler, accumulate=self.accumulate, seed=self.seed,
            device=self.device, workers=self.workers, val_every=self.val_every,
            checkpoint_every=self.checkpoint_every, resume=self.resume, threads=self.threads,
            keep=self.keep, patience=self.patience, monitor=self.monitor,
            tensorboard=None if self.tensorboard is None else Path(self.tensorboard),
            inputs={what: str(path) for what, path in self.input_files().items()},
        )

    def input_files(self) -> dict[str, Path]:
        """The files this run reads, by what they are (its outputs must be none of them)."""
        dataset = getattr(self, "dataset", None)
        if dataset and Path(dataset).is_file():  # a CSV of the user's own data
            return {"the dataset (--dataset)": Path(dataset)}
        return {}

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """Reject option values that cannot work, before any work is done."""
        self.optimizer = str(self.optimizer).strip().lower()
        self.scheduler = str(self.scheduler).strip().lower()
        for ok, message in self.rules():
            if not ok:
                raise InputError(message)

    def rules(self) -> list[tuple[bool, str]]:
        """``(holds, message)`` per rule; a subclass extends the list with its own."""
        return [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.images_per_epoch >= 0,
             f"--images-per-epoch must be >= 0, got {self.images_per_epoch}."),
            (self.embed_batch_size >= 1, "embed_batch_size must be at least 1."),
            (self.keep in (None, *KEEP_CHOICES),
             f"--keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}."),
            (self.keep != "best" or self.val_every > 0,
             "--keep best keeps the best validated model, so it needs validation: add "
             "--val-every N (or use --keep last)."),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}."),
            (self.patience == 0 or self.val_every > 0,
             "--patience counts validations without improvement, so it needs validation: add "
             "--val-every N."),
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63 - 1, got {self.seed}."),
            (str(self.optimizer).lower() in OPTIMIZER_CHOICES, f"Unknown --optimizer "
             f"{self.optimizer!r}. Choose one of: {', '.join(OPTIMIZER_CHOICES)}."),
            (str(self.scheduler).lower() in SCHEDULER_CHOICES, f"Unknown --scheduler "
             f"{self.scheduler!r}. Choose one of: {', '.join(SCHEDULER_CHOICES)}."),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}."),
        ]


# -- teacher training -----------------------------------------------------------------------

#: Reference hyper-parameters per dataset (``--preset paper``): ResNet-50, GeM, whitening
#: 512, 448 px, ImageNet initialisation. Where METHOD.md and the reference code give no
#: value for teacher training (epochs, learning rate, batch size), the choice is ours and
#: marked in docs/train.md.
TEACHER_PAPER_PRESETS: dict[str, dict[str, Any]] = {
    name: {
        "arch": "resnet50", "pool": "gem", "dim": 512, "init": "pretrained", "res": 448,
        "epochs": 100, "lr": 1e-4, "weight_decay": 1e-6, "samples_per_class": 4,
        "negatives": 4, "margin": 0.7, "batch_size": 20, "accumulate": 1,
        "images_per_epoch": 2000, "pool_size": 20000, "seed": 1234,
    }
    for name in ("cub200", "cars196", "sop")
}


@dataclass(kw_only=True)
class TeacherConfig(TrainingOptions):
    """Every option of ``raml train-teacher`` (defaults: the reference's where it has one).

    The options every training shares are documented on
    :class:`~raml_cli.train.options.TrainingOptions`; here ``batch_size`` counts anchors
    (a forward pass holds ``batch_size * (1 + negatives)`` images) and
    ``images_per_epoch`` anchors per epoch (0: every image of the split in whole groups).

    Attributes:
        dataset: a catalogue name or the path of the user's data.
        arch: backbone name (timm, or ``torchvision/<name>``).
        pool: ``gem``, ``gemmp`` (one p per channel), ``mac``, ``spoc`` or ``rmac``.
        dim: whitening output size (0: no whitening).
        whitening_init: ``pca`` (the centred PCA whitening of pooled, L2-normalised
            descriptors of a seeded sample of training images; see
            :mod:`raml_cli.model.whitening`) or ``random`` (the layer's random init).
        init: ``pretrained`` (ImageNet weights), ``none`` (random) or a weights file path.
        res: training resolution in pixels (square crops).
        samples_per_class: images per class that sit together in a micro-batch.
        negatives: negatives drawn per anchor.
        positives: ``all`` (each anchor with every other image of its class in the
            micro-batch, as the reference code does) or ``hardest`` (only the least
            similar one; with hard negatives it collapses the space).
        margin: triplet margin (squared distances, in [0, 4]).
        pool_size: images embedded each epoch to draw negatives from (bounded by the split).
    """

    dataset: str = field(kw_only=False)
    output: Path = Path("teacher.safetensors")
    root: Path = Path("data")
    arch: str = "resnet50"
    pool: str = "gem"
    dim: int = 512
    whitening_init: str = "pca"
    init: str = "pretrained"
    res: int = 448
    lr: float = 1e-4
    samples_per_class: int = 4
    negatives: int = 4
    positives: str = "all"
    margin: float = 0.7
    batch_size: int = 20
    accumulate: int = 1
    pool_size: int = 20000

    PAPER_PRESETS: ClassVar[dict[str, dict[str, Any]]] = TEACHER_PAPER_PRESETS

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["init"] = str(self.init)
        return out

    def input_files(self) -> dict[str, Path]:
        files = super().input_files()
        if self.init not in ("pretrained", "none"):
            files["the initial weights (--init-weights)"] = Path(self.init)
        return files

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (8 <= self.res <= MAX_RESOLUTION,
             f"--res must be between 8 and {MAX_RESOLUTION} pixels, got {self.res}."),
            *super().rules(),
            (self.negatives >= 1, f"--negatives must be at least 1, got {self.negatives}."),
            (self.margin >= 0, f"--margin must be >= 0, got {self.margin}."),
            (self.pool_size >= 1, f"--pool-size must be at least 1, got {self.pool_size}."),
            (0 <= self.dim <= MAX_EMBEDDING_DIM,
             f"--dim must be 0 (no whitening) or up to {MAX_EMBEDDING_DIM}, got {self.dim}."),
        ]

    def check(self) -> None:
        super().check()
        from raml_cli.model.whitening import check_whitening_init
        from raml_cli.train.mining import POSITIVE_CHOICES

        self.whitening_init = check_whitening_init(self.whitening_init)
        if str(self.positives).strip().lower() not in POSITIVE_CHOICES:
            raise InputError(f"Unknown --positives {self.positives!r}. Choose one of: "
                             f"{', '.join(POSITIVE_CHOICES)} (all: each anchor with every "
                             "other image of its class in the batch, the default; hardest: "
                             "only the least similar one).")
        self.positives = str(self.positives).strip().lower()


# -- distillation -----------------------------------------------------------------------------

DISTILL_MODES = ("aug", "regression")
STUDENT_INITS = ("teacher", "pretrained", "random", "weights")

#: The reference's values (``--preset paper``): METHOD.md and the reference code
#: (pavelsuma/raml: 8 images x 8 augmentations per micro-batch, 25 micro-batches per
#: step, 2000 images per epoch, 100 epochs, ImageNet initialisation, seed 1234).
_DISTILL_PAPER_COMMON: dict[str, Any] = {
    "mode": "aug", "init": "pretrained", "augs": 8, "mixup": 0.2, "batch_size": 8,
    "accumulate": 25, "images_per_epoch": 2000, "epochs": 100, "weight_decay": 1e-6,
    "seed": 1234,
}
DISTILL_PAPER_PRESETS: dict[str, dict[str, Any]] = {
    "cub200": {**_DISTILL_PAPER_COMMON, "lambda1": 0.7718, "lambda2": 0.6684, "lr": 1.4025e-4},
    "cars196": {**_DISTILL_PAPER_COMMON, "lambda1": 0.6371, "lambda2": 0.7731, "lr": 1.1692e-4},
    "sop": {**_DISTILL_PAPER_COMMON, "lambda1": 0.7482, "lambda2": 0.6778, "lr": 1.7579e-4},
}


@dataclass(kw_only=True)
class DistillConfig(TrainingOptions):
    """Every option of ``raml distill``.

    The options every training shares are documented on
    :class:`~raml_cli.train.options.TrainingOptions`; here ``batch_size`` counts images
    (each with ``augs`` views) and ``images_per_epoch`` images per epoch (0: the whole
    training split); ``root`` defaults to the teacher's ``root`` option, else ``data``.

    Attributes:
        teacher: the teacher's model file.
        query_res: ``r``, the student's resolution in pixels.
        dataset: catalogue name or path of the user's data; default: the teacher's.
        database_res: ``R``, the teacher's resolution; default: the teacher's training
            resolution.
        student_arch: the student's backbone (timm name or ``torchvision/NAME``); ``None``:
            the teacher's (resolution asymmetry). Another architecture (architecture
            asymmetry) gets a whitening layer of the teacher's embedding size when the
            teacher has one or its width differs, so its vectors live in the teacher's
            space.
        init: the student's initial weights: ``teacher`` (a copy of the teacher; same
            architecture only), ``pretrained`` (ImageNet weights of the architecture,
            needs the hub or its cache), ``random`` (BatchNorm statistics measured on
            training images, then frozen) or ``weights`` (from ``init_weights``).
        init_weights: a weights file (safetensors or a PyTorch state dict) to start the
            student from; setting it sets ``init`` to ``weights``.
        mode: ``aug`` (coupled augmentations, full loss) or ``regression`` (absolute
            term on precomputed teacher vectors).
        augs: ``P``, coupled views per image (``aug`` mode).
        mixup: mixup's Beta parameter alpha; 0 disables mixup (``aug`` mode).
        lambda1, lambda2: weights of the teacher-student and the student-student
            relational terms (``aug`` mode); defaults: the reference's CUB values.
    """

    teacher: Path = field(kw_only=False)
    query_res: int = field(kw_only=False)
    output: Path = Path("student.safetensors")
    dataset: str | None = None
    database_res: int | None = None
    student_arch: str | None = None
    init: str = "teacher"
    init_weights: Path | None = None
    mode: str = "aug"
    augs: int = 8
    mixup: float = 0.2
    lambda1: float = 0.7718
    lambda2: float = 0.6684
    lr: float = 1.4025e-4
    batch_size: int = 8
    accumulate: int = 25

    PAPER_PRESETS: ClassVar[dict[str, dict[str, Any]]] = DISTILL_PAPER_PRESETS
    RUNTIME_OPTIONS: ClassVar[tuple[str, ...]] = (*TrainingOptions.RUNTIME_OPTIONS, "teacher")

    def __post_init__(self) -> None:
        self.teacher = Path(self.teacher)
        self.query_res = int(self.query_res)
        if self.init_weights is not None:
            self.init_weights = Path(self.init_weights)
            self.init = "weights"

    @classmethod
    def preset_dataset(cls, options: dict[str, Any]) -> str | None:
        """The dataset given, else the teacher's (read from its metadata)."""
        return options.get("dataset") or read_teacher_info(Path(options["teacher"])).dataset

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["root"] = None if self.root is None else str(self.root)
        return out

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (8 <= self.query_res <= MAX_RESOLUTION,
             f"--query-res must be between 8 and {MAX_RESOLUTION} pixels, got "
             f"{self.query_res}."),
            (self.database_res is None or 8 <= self.database_res <= MAX_RESOLUTION,
             f"--database-res must be between 8 and {MAX_RESOLUTION} pixels, got "
             f"{self.database_res}."),
            (self.mode in DISTILL_MODES, f"--mode must be one of {', '.join(DISTILL_MODES)}, "
                                         f"got {self.mode!r}."),
            (self.init in STUDENT_INITS, f"--init must be one of {', '.join(STUDENT_INITS)}, "
                                         f"got {self.init!r}."),
            (self.init != "weights" or self.init_weights is not None,
             "--init weights needs the file: give --init-weights FILE (safetensors or a "
             "PyTorch state dict)."),
            (self.augs >= 1, f"--augs must be at least 1, got {self.augs}."),
            (self.mixup >= 0 and math.isfinite(self.mixup),
             f"--mixup must be >= 0 (0: no mixup), got {self.mixup}."),
            (self.mode != "aug" or self.mixup == 0 or self.batch_size >= 2,
             "Mixup blends each view with a view of another image of the micro-batch, so it "
             "needs --batch-size 2 or more; raise --batch-size or use --no-mixup."),
            (self.lambda1 >= 0 and self.lambda2 >= 0,
             f"--lambda1 and --lambda2 must be >= 0, got {self.lambda1} and {self.lambda2}."),
            *super().rules(),
        ]

    def check(self) -> None:
        super().check()
        _check_teacher_exists(self.teacher)
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise InputError(f"The --init-weights file {self.init_weights} does not exist. "
                             "Give the path of a safetensors file or a PyTorch state dict, "
                             "or use --init pretrained or --init random.")

    def input_files(self) -> dict[str, Path]:
        return {**super().input_files(), "the teacher (--teacher)": Path(self.teacher)}

    @property
    def views(self) -> int:
        """``P``: views per image (1 in ``regression`` mode)."""
        return 1 if self.mode == "regression" else self.augs


def _check_teacher_exists(path: Path) -> None:
    if not Path(path).is_file():
        raise InputError(f"The teacher model file {path} does not exist. Train one with "
                         "`raml train-teacher`, or give the path of a .safetensors file "
                         "written by it.")


def read_teacher_info(path: Path) -> Any:
    """The teacher's :class:`~raml_cli.model.files.ModelInfo` (metadata only, no weights)."""
    from raml_cli.model.files import read_model_info

    _check_teacher_exists(path)
    return read_model_info(path)
