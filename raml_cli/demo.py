"""``raml demo``: the paper's effect on the built-in toy dataset, end to end, on a CPU.

The pipeline, with the same engine functions as the individual commands::

    raml download toy                        -> OUT/data/toy
    raml train-teacher  at R (128 px)        -> OUT/teacher-128px.safetensors
    raml distill        to r (40 px)         -> OUT/student-40px.safetensors
    raml distill --student-arch lcnet_035 at R -> OUT/student-lcnet_035-128px.safetensors
    raml embed  (test split) teacher@R, teacher@r, student@r, lighter student@R
                                             -> OUT/embeddings/*.h5
    raml evaluate  six ways                  -> the table, OUT/demo.json, OUT/tradeoff.png

The table has the rows of the paper's comparison (METHOD.md): the teacher at the
database resolution (symmetric, the upper bound), the teacher at the query resolution
(symmetric), *naive asymmetric* (teacher@r queries against the teacher@R database),
*RAML asymmetric* (student@r queries against the teacher@R database), *architecture
asymmetric* (a lighter backbone's student at R against the same database: the
alternative way to cheap queries) and the student alone at r (symmetric); columns
R@1, R@4, mAP (plain, non-interpolated AP over the full ranking; ``map`` in
:mod:`raml_cli.evaluate`) and the query-side cost in GMACs.

Every step keeps its output in ``OUT`` and is skipped when a rerun finds it complete
and made with the same options (models are checked through their recorded options,
embeddings through the model hash and resolution); an interrupted training resumes
from its checkpoint. The artifacts are ordinary raml files, so the other commands can
continue from them (``raml evaluate OUT/embeddings/student-40px-test.h5
OUT/embeddings/teacher-128px-test.h5``).

The defaults (:data:`DEMO_TEACHER`, :data:`DEMO_STUDENT`) were chosen so that the whole
demo runs in a few minutes on a 2-core CPU; docs/demo.md records the measured table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_write_text, ensure_folder
from raml_cli.errors import InputError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.seeding import check_seed

ROW_NAMES = ("teacher_high_sym", "teacher_low_sym", "naive_asym", "raml_asym",
             "arch_asym", "student_low_sym")
ROW_TITLES = {
    "teacher_high_sym": "teacher@R symmetric",
    "teacher_low_sym": "teacher@r symmetric",
    "naive_asym": "naive asymmetric (teacher@r -> teacher@R)",
    "raml_asym": "RAML asymmetric (student@r -> teacher@R)",
    "arch_asym": "architecture asymmetric (lighter student@R -> teacher@R)",
    "student_low_sym": "student@r symmetric",
}

#: Teacher training of the demo (options of :class:`~raml_cli.train.teacher.TeacherConfig`):
#: timm's ``test_resnet`` (a ResNet with one basic block per stage, 0.4 M parameters) from
#: random weights, every training image once per epoch.
DEMO_TEACHER: dict[str, Any] = {
    "arch": "test_resnet", "pool": "gem", "dim": 128, "init": "none", "epochs": 10,
    "lr": 1e-3, "margin": 0.2, "samples_per_class": 4, "negatives": 1, "batch_size": 20,
    "images_per_epoch": 0, "pool_size": 1000,
}
#: With ``--init-weights`` (a pretrained backbone, e.g. the ImageNet weights of
#: ``tf_efficientnet_lite0``), these replace the random-init choices of
#: :data:`DEMO_TEACHER`: the train-teacher defaults for the loss and the learning rate
#: (a pretrained network is fine-tuned, not trained from scratch), fewer epochs, and one
#: negative per anchor as in :data:`DEMO_TEACHER` (lite0 is ~10x slower than test_resnet).
DEMO_PRETRAINED_TEACHER: dict[str, Any] = {
    "arch": "tf_efficientnet_lite0", "lr": 1e-4, "margin": 0.7, "epochs": 3,
}
#: Distillation of the demo (options of :class:`~raml_cli.train.distill.DistillConfig`):
#: the paper's method (coupled augmentations, mixup, the full loss with the reference's
#: CUB weights), student initialised from the teacher, a short schedule.
DEMO_STUDENT: dict[str, Any] = {
    "mode": "aug", "init": "teacher", "augs": 4, "mixup": 0.2, "lambda1": 0.7718,
    "lambda2": 0.6684, "epochs": 6, "lr": 4e-3, "batch_size": 8, "accumulate": 1,
    "images_per_epoch": 0,
}
#: With ``--init-weights``, these replace options of :data:`DEMO_STUDENT`: the student
#: starts from a fine-tuned pretrained teacher, so a lower rate and a shorter schedule.
DEMO_PRETRAINED_STUDENT: dict[str, Any] = {"epochs": 2, "lr": 1e-3}


#: PyTorch's CPU threads in the demo. One: the table is then the same on any number of
#: cores (and on 2 cores the decoding worker has the other one to itself).
DEMO_CPU_THREADS = 1

#: The architecture-asymmetric student of the demo (Budnik & Avrithis, CVPR 2021): a
#: lighter backbone at the database resolution, distilled with :data:`DEMO_STUDENT`'s
#: options from random weights (an ImageNet init would need the network). timm's
#: ``lcnet_035`` is the lightest timm backbone whose query cost at 128 px (0.012 GMACs)
#: comes near the RAML student's at 40 px (0.007 GMACs); the tiny ``test_*`` models cost
#: 0.02 GMACs or more there.
DEMO_ARCH_STUDENT: dict[str, Any] = {"student_arch": "lcnet_035", "init": "random"}


@dataclass
class DemoConfig:
    """Options of ``raml demo``.

    Attributes:
        out: the folder that keeps every artifact (reused by a rerun).
        seed: seed of the toy dataset and of both trainings.
        query_res: ``r``, the student's (query) resolution.
        database_res: ``R``, the teacher's (database) resolution.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        dataset: ``None`` for the built-in toy dataset (generated into ``OUT/data``), or
            a dataset name / path as ``--dataset`` takes it (then it is not generated).
        arch: the backbone of teacher and student (``None``: ``test_resnet``, or
            ``tf_efficientnet_lite0`` with ``init_weights``).
        init_weights: a weights file (safetensors or a PyTorch state dict) to start the
            teacher from, instead of random weights; then :data:`DEMO_PRETRAINED_TEACHER`
            applies.
        teacher, student: overrides of :data:`DEMO_TEACHER` / :data:`DEMO_STUDENT`
            (e.g. a tiny run for tests); ``student`` applies to both students.
        arch_student: overrides of :data:`DEMO_ARCH_STUDENT` (the lighter student).
        workers: DataLoader processes (default: 1 on the CPU, so that decoding and
            augmentation run beside the network; 4 on CUDA).
        threads: CPU threads of PyTorch (default on the CPU: :data:`DEMO_CPU_THREADS`,
            whatever the cores, so that the table depends on the seed, not the machine).
        ks: recall cut-offs evaluated (the table shows R@1 and R@4).
    """

    out: Path = Path("raml-demo")
    seed: int = 0
    query_res: int = 40
    database_res: int = 128
    device: str = "auto"
    dataset: str | None = None
    arch: str | None = None
    init_weights: Path | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    arch_student: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    threads: int | None = None
    ks: tuple[int, ...] = (1, 2, 4, 8)

    def check(self) -> None:
        if self.query_res < 8 or self.database_res < 8:
            raise InputError(f"Resolutions must be at least 8 pixels; got --query-res "
                             f"{self.query_res} and a database resolution {self.database_res}.")
        if self.query_res >= self.database_res:
            raise InputError(f"--query-res ({self.query_res}) must be below the database "
                             f"resolution ({self.database_res}): the demo shows small queries "
                             "against a large-resolution database.")
        if 1 not in self.ks or 4 not in self.ks:
            raise InputError("The demo table needs recall at 1 and 4; keep 1 and 4 in ks.")
        check_seed(self.seed)
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise InputError(f"--init-weights {self.init_weights} is not a file. Give the "
                             "path of a weights file (safetensors or a PyTorch state dict) "
                             "whose tensors fit --arch.")

    def teacher_options(self) -> dict[str, Any]:
        """The options of the demo's teacher: defaults, pretrained choices, overrides."""
        options = dict(DEMO_TEACHER)
        if self.init_weights is not None:
            options.update(DEMO_PRETRAINED_TEACHER)
            options["init"] = str(self.init_weights)
        if self.arch is not None:
            options["arch"] = self.arch
        options.update(self.teacher)
        return options

    def student_options(self) -> dict[str, Any]:
        """The options of the demo's student: defaults, pretrained choices, overrides."""
        options = dict(DEMO_STUDENT)
        if self.init_weights is not None:
            options.update(DEMO_PRETRAINED_STUDENT)
        options.update(self.student)
        return options


@dataclass
class DemoResult:
    """The demo's table and where its artifacts are.

    Attributes:
        rows: one dict per row of :data:`ROW_NAMES`: ``name``, ``query_res``,
            ``database_res``, ``recall@1``, ``recall@4``, ``map`` (fractions in [0, 1]),
            ``query_gmacs``.
        output_dir: the artifacts' folder.
        seconds: wall time per step (``data``, ``teacher``, ``student``, ``embed``,
            ``evaluate``, ``total``) of this invocation (a reused step takes ~0 s).
        reused: the steps whose outputs were reused.
        files: the artifacts by role.
    """

    rows: list[dict[str, Any]]
    output_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The object ``raml demo --json`` prints: ``{"rows": [...], "output_dir": ...}``."""
        return {"rows": self.rows, "output_dir": str(self.output_dir)}

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["name"] == name)


def run_demo(config: DemoConfig, reporter: Reporter = NULL_REPORTER) -> DemoResult:
    """Run (or continue) the whole demo and return its table; see the module docstring."""
    from raml_cli.devices import resolve_device, torch_threads

    config.check()
    out = ensure_folder(config.out, "--out")
    device = resolve_device(config.device)
    cpu = device.type == "cpu"
    workers = config.workers if config.workers is not None else (1 if cpu else 4)
    threads = config.threads
    if threads is None and cpu:
        # Fixed, not from the cores: a CPU's float sums depend on how the work is split
        # over threads, so a count taken from os.cpu_count() (which in a container is
        # the host's) would make the table depend on the machine, not the seed alone.
        threads = DEMO_CPU_THREADS
    run = _Run(config, out, str(device), workers, reporter)
    started = time.perf_counter()
    with torch_threads(threads):
        with run.step("data"):
            dataset, root = run.prepare_data()
        with run.step("teacher"):
            teacher = run.train_teacher(dataset, root)
        with run.step("student"):
            student = run.distill(teacher)
        with run.step("arch_student"):
            arch_student = run.distill_architecture(teacher)
        with run.step("embed"):
            embeddings = run.embed(dataset, root, teacher, student, arch_student)
        with run.step("evaluate"):
            rows = run.evaluate(embeddings, teacher, student, arch_student)
        run.plot(rows)
    run.seconds["total"] = time.perf_counter() - started
    result = DemoResult(rows, out, run.seconds, run.reused,
                        {"teacher": str(teacher), "student": str(student),
                         "arch_student": str(arch_student),
                         "tradeoff_png": str(out / "tradeoff.png"),
                         **{f"embeddings_{k}": str(v) for k, v in embeddings.items()}})
    record = {**result.to_json(), "seconds": result.seconds, "reused": result.reused,
              "files": result.files, "device": str(device), "workers": workers,
              "threads": threads, "config": _jsonable(asdict(config))}
    atomic_write_text(out / "demo.json", json.dumps(record, indent=2) + "\n")
    reporter.log(f"demo finished in {result.seconds['total']:.0f} s; table in "
                 f"{out / 'demo.json'}")
    return result


class _Run:
    """The steps of one demo invocation (each skipped when its output is reusable)."""

    def __init__(self, config: DemoConfig, out: Path, device: str, workers: int,
                 reporter: Reporter) -> None:
        self.config = config
        self.out = out
        self.device = device
        self.workers = workers
        self.reporter = reporter
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []
        self._teacher_info: Any = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)

    # -- 1. data ----------------------------------------------------------------------------

    def prepare_data(self) -> tuple[str, Path]:
        from raml_cli.data.prepare import prepare_dataset

        if self.config.dataset is not None:
            return self.config.dataset, self.out / "data"
        self.reporter.log("[1/5] the toy dataset (raml download toy)")
        prepare_dataset("toy", root=self.out / "data", seed=self.config.seed,
                        reporter=self.reporter)
        return "toy", self.out / "data"

    # -- 2. teacher -------------------------------------------------------------------------

    def train_teacher(self, dataset: str, root: Path) -> Path:
        from raml_cli.model.files import trained_with
        from raml_cli.train.teacher import TeacherConfig, train_teacher

        cfg = self.config
        output = self.out / f"teacher-{cfg.database_res}px.safetensors"
        options = cfg.teacher_options()
        teacher_config = TeacherConfig.from_options(
            dataset, output=output, root=root, res=cfg.database_res, seed=cfg.seed,
            device=self.device, workers=self.workers, **options)
        self.reporter.log(f"[2/5] teacher: {options['arch']} at {cfg.database_res} px "
                          f"(raml train-teacher)")
        if trained_with(output, teacher_config.defining_options()):
            self.reused.append("teacher")
            self.reporter.log(f"reusing {output}")
            return output
        teacher_config.resume = _checkpoint_exists(output)
        return train_teacher(teacher_config, self.reporter)

    # -- 3. student -------------------------------------------------------------------------

    def distill(self, teacher: Path) -> Path:
        """The RAML student: the teacher's architecture at ``r``."""
        cfg = self.config
        return self._distil(teacher, cfg.query_res, cfg.student_options(),
                            self.out / f"student-{cfg.query_res}px.safetensors", "student",
                            f"[3/5] student: distilled to {cfg.query_res} px (raml distill)")

    def distill_architecture(self, teacher: Path) -> Path:
        """The architecture-asymmetric row's student: a lighter backbone at ``R``."""
        cfg = self.config
        options = {**DEMO_STUDENT, **DEMO_ARCH_STUDENT, **cfg.student, **cfg.arch_student}
        arch = options["student_arch"]
        output = self.out / f"student-{arch.replace('/', '-')}-{cfg.database_res}px.safetensors"
        return self._distil(teacher, cfg.database_res, options, output, "arch_student",
                            f"[3/5] lighter student: {arch} distilled at {cfg.database_res} "
                            "px (raml distill --student-arch)")

    def _distil(self, teacher: Path, query_res: int, options: dict[str, Any], output: Path,
                name: str, message: str) -> Path:
        """Distil ``teacher`` into ``output`` at ``query_res``, or reuse the file when it
        was trained with these options from this teacher."""
        from raml_cli.model.files import trained_with
        from raml_cli.train.distill import describe_distillation, distill
        from raml_cli.train.options import DistillConfig

        distill_config = DistillConfig.from_options(
            teacher, query_res, output=output, seed=self.config.seed, device=self.device,
            workers=self.workers, **options)
        distill_config.check()
        self.reporter.log(message)
        info = self.teacher_info(teacher)
        if trained_with(output, describe_distillation(distill_config, info),
                         teacher_sha256=info.sha256):
            self.reused.append(name)
            self.reporter.log(f"reusing {output}")
            return output
        distill_config.resume = _checkpoint_exists(output)
        return distill(distill_config, self.reporter, teacher_info=info)

    def teacher_info(self, teacher: Path) -> Any:
        """The teacher's metadata and sha256, read and hashed once per run."""
        from raml_cli.train.options import read_teacher_info

        if self._teacher_info is None or Path(self._teacher_info.path) != Path(teacher):
            self._teacher_info = read_teacher_info(teacher)
        return self._teacher_info

    # -- 4. embeddings ----------------------------------------------------------------------

    def embed(self, dataset: str, root: Path, teacher: Path,
              student: Path, arch_student: Path) -> dict[str, Path]:
        from raml_cli.data.catalog import load_dataset
        from raml_cli.embed import embed_dataset
        from raml_cli.model.files import file_sha256
        from raml_cli.store import is_current

        cfg = self.config
        splits = load_dataset(dataset, root)
        samples = splits.split("test")
        folder = self.out / "embeddings"
        jobs = {
            "teacher_high": (teacher, cfg.database_res, "teacher"),
            "teacher_low": (teacher, cfg.query_res, "teacher"),
            "student_low": (student, cfg.query_res, "student"),
            "arch_high": (arch_student, cfg.database_res, arch_student.stem.rsplit("-", 1)[0]),
        }
        self.reporter.log(f"[4/5] embedding the {len(samples)} test images four ways "
                          "(raml embed)")
        hashes = {teacher: self.teacher_info(teacher).sha256,
                  **{model: file_sha256(model) for model in (student, arch_student)}}
        paths = [s.path for s in samples]
        files = {}
        for key, (model, res, role) in jobs.items():
            output = folder / f"{role}-{res}px-test.h5"
            files[key] = output
            if is_current(output, model_sha256=hashes[model], resolution=res, paths=paths):
                self.reused.append(f"embeddings {output.name}")
                continue
            embed_dataset(model, output, samples, splits.root, dataset=splits.name,
                          split="test", res=res, workers=self.workers, device=self.device,
                          reporter=self.reporter)
        return files

    # -- 5. evaluation ----------------------------------------------------------------------

    def evaluate(self, files: dict[str, Path], teacher: Path,
                 student: Path, arch_student: Path) -> list[dict[str, Any]]:
        from raml_cli.evaluate import evaluate_sets
        from raml_cli.evaluate.space import collapse_warning
        from raml_cli.model.cost import macs_per_image
        from raml_cli.model.files import load_model
        from raml_cli.store import read_embeddings

        cfg = self.config
        self.reporter.log("[5/5] evaluating (raml evaluate)")
        sets = {key: read_embeddings(path) for key, path in files.items()}
        teacher_net, _ = load_model(teacher)
        student_net, _ = load_model(student)
        arch_net, _ = load_model(arch_student)
        gmacs = {
            "arch_high": macs_per_image(arch_net, cfg.database_res) / 1e9,
            "teacher_high": macs_per_image(teacher_net, cfg.database_res) / 1e9,
            "teacher_low": macs_per_image(teacher_net, cfg.query_res) / 1e9,
            "student_low": macs_per_image(student_net, cfg.query_res) / 1e9,
        }
        plan = {  # row -> (query set, database set)
            "teacher_high_sym": ("teacher_high", "teacher_high"),
            "teacher_low_sym": ("teacher_low", "teacher_low"),
            "naive_asym": ("teacher_low", "teacher_high"),
            "raml_asym": ("student_low", "teacher_high"),
            "arch_asym": ("arch_high", "teacher_high"),
            "student_low_sym": ("student_low", "student_low"),
        }
        rows = []
        warned: set[str] = set()
        for name in ROW_NAMES:
            query, database = plan[name]
            result = evaluate_sets(sets[query], sets[database], ks=cfg.ks)
            for key, spread in ((query, result.query_space), (database, result.database_space)):
                if spread.collapsed and key not in warned:
                    warned.add(key)  # a collapsed space is what makes a row fail silently
                    self.reporter.warn(collapse_warning(f"the space of {files[key].name}",
                                                        spread))
            rows.append({
                "name": name,
                "query_res": cfg.database_res if query in ("teacher_high", "arch_high")
                else cfg.query_res,
                "database_res": cfg.database_res if database == "teacher_high"
                else cfg.query_res,
                "recall@1": float(result.metrics["recall@1"]),
                "recall@4": float(result.metrics["recall@4"]),
                "map": float(result.metrics["map"]),
                "query_gmacs": round(gmacs[query], 6),
                "query_mean_cosine": round(float(result.query_space.mean_cosine), 4),
            })
        return rows

    def plot(self, rows: list[dict[str, Any]]) -> None:
        """``OUT/tradeoff.png``: the asymmetric rows' R@1 against their query GMACs."""
        from raml_cli.tradeoff.plot import plot_tradeoff

        teacher_arch = {**DEMO_TEACHER, **self.config.teacher}["arch"]
        arch = {**DEMO_ARCH_STUDENT, **self.config.student,
                **self.config.arch_student}["student_arch"]
        kinds = {"teacher_high_sym": ("teacher", teacher_arch),
                 "naive_asym": ("naive", teacher_arch),
                 "raml_asym": ("resolution", teacher_arch),
                 "arch_asym": ("architecture", arch)}
        points = [{**row, "kind": kinds[row["name"]][0], "student_arch": kinds[row["name"]][1]}
                  for row in rows if row["name"] in kinds]
        plot_tradeoff(points, self.out / "tradeoff.png",
                      "raml demo: toy test split, queries against the teacher@R database")


def _checkpoint_exists(output: Path) -> bool:
    from raml_cli.train.checkpoint import checkpoint_path

    return checkpoint_path(output).exists()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = ["DEMO_ARCH_STUDENT", "DEMO_CPU_THREADS", "DEMO_PRETRAINED_STUDENT",
           "DEMO_PRETRAINED_TEACHER", "DEMO_STUDENT", "DEMO_TEACHER", "DemoConfig", "DemoResult",
           "ROW_NAMES", "ROW_TITLES", "run_demo"]
