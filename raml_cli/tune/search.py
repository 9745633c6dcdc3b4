"""``raml tune``: an optuna search over a training's options, resumable in SQLite.

The study lives in an SQLite database (``--storage FILE.db``, optuna's RDB storage), so
a search that is killed resumes by running the same command: finished trials are kept,
and a trial left RUNNING by a process that is gone (same host, its pid no longer alive)
is marked FAIL and its parameters are queued again, so the next invocation re-runs it.

Each trial trains in this process (:func:`~raml_cli.train.teacher.train_teacher_result`
or :func:`~raml_cli.train.distill.distill_result`) in ``OUT/trial-N/`` with validation on
the ``val`` classes (training on ``fit``), keeping its best validated model by the
objective; every validation is reported to optuna, whose median pruner may stop the
trial. The objective is the kept model's validation metric (higher is better).

Determinism: the first trial of a new study runs the given options (the reference did
the same); every later trial's sampler is seeded by ``(seed, number of trials already
ended)``, so a search that was killed and resumed samples what an uninterrupted one
samples, and on the CPU the same seed gives the same trials and the same best options.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_write_text
from raml_cli.errors import InputError, TrainingError
from raml_cli.progress import NULL_REPORTER, Reporter
from raml_cli.train.options import TrainingOptions
from raml_cli.tune.space import Parameter

OBJECTIVES = ("map", "recall@1", "map@r")
#: Trials a new study runs before the median pruner may stop one, and validations (in
#: epochs) a trial runs before it can be pruned.
PRUNER_STARTUP_TRIALS = 3
PRUNER_WARMUP_EPOCHS = 2
_STUDY_ATTR = "raml"


@dataclass
class TuneConfig:
    """One search.

    Attributes:
        training: the base options of every trial (a ``TeacherConfig`` or ``DistillConfig``);
            a trial replaces the searched options, its output and TensorBoard folder.
        space: the searched options.
        trials: the study ends with this many ended trials (complete, pruned or failed by
            divergence; trials killed with the process are re-run, not counted).
        output: the folder for ``trial-N/``, ``best.json`` and ``trials.png``.
        storage: the SQLite file of the study (default ``OUT/study.db``).
        study: the study's name in the storage.
        objective: the validation metric to maximise: ``map``, ``recall@1``, ``map@r``.
        prune: stop unpromising trials with optuna's median pruner.
        keep_all: keep every trial's model (default: only the best trial's).
    """

    training: TrainingOptions
    space: list[Parameter]
    trials: int = 20
    output: Path = Path("tuned")
    storage: Path | None = None
    study: str = "raml"
    objective: str = "map"
    prune: bool = True
    keep_all: bool = False

    @property
    def role(self) -> str:
        return "student" if type(self.training).__name__ == "DistillConfig" else "teacher"

    @property
    def storage_path(self) -> Path:
        return Path(self.storage) if self.storage is not None else Path(self.output) / "study.db"

    def check(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}."),
            (self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}, "
                                           f"got {self.objective!r}."),
            (bool(self.space), "The search space is empty: give --space FILE.json with at "
                               "least one option."),
            (self.training.val_every != 0,
             "raml tune scores each trial on the val split, so --val-every 0 (no validation) "
             "cannot be tuned: drop it or give --val-every N."),
            (not self.training.resume, "--resume is not a tune option: a search resumes by "
                                       "running the same command with the same --storage."),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.training.check()

    def signature(self) -> dict[str, Any]:
        """What a study must share to be continued: role, options, space, objective."""
        base = {k: v for k, v in self.training.defining_options().items()
                if k not in {p.name for p in self.space}}
        return {"role": self.role, "objective": self.objective,
                "space": {p.name: p.to_dict() for p in self.space},
                "options": json.loads(json.dumps(base, default=str))}


@dataclass
class TuneResult:
    """A finished search: every trial (best first), the best, and the files written."""

    study: str
    storage: Path
    objective: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_json: Path | None = None
    plot: Path | None = None
    ran: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "storage": str(self.storage), "objective": self.objective,
                "trials": self.trials, "best": self.best, "ran": self.ran,
                "best_json": None if self.best_json is None else str(self.best_json),
                "plot": None if self.plot is None else str(self.plot)}


def tune(config: TuneConfig, reporter: Reporter = NULL_REPORTER) -> TuneResult:
    """Run (or continue) the search ``config`` describes; see the module docstring."""
    import optuna

    config.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    output = Path(config.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        config.storage_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"The tune output folder {output} cannot be created ({err}). Choose "
                         "another -o.") from None
    storage = _storage(config.storage_path)
    study = optuna.create_study(storage=storage, study_name=config.study, direction="maximize",
                                load_if_exists=True)
    _check_study(study, config)
    _fail_dead_trials(study, storage, config.study, output, reporter)
    if not study.trials:
        study.enqueue_trial({p.name: getattr(config.training, p.name) for p in config.space},
                            user_attrs={"given": True})
    ran = 0
    while _ended(study) < config.trials:
        index = _ended(study)
        study = optuna.load_study(study_name=config.study, storage=storage,
                                  sampler=_sampler(config.training.seed, index),
                                  pruner=_pruner(config.prune))
        _run_trial(study, config, reporter)
        ran += 1
    return _finish(study, config, ran)


def _storage(path: Path) -> Any:
    import optuna

    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    except Exception as err:  # sqlalchemy raises many kinds for a file that is not a database
        raise InputError(f"The study storage {path} cannot be opened as an SQLite database "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}). Give another "
                         "--storage, or delete that file to start a new search.") from None


def _sampler(seed: int, index: int) -> Any:
    import numpy as np
    import optuna

    state = int(np.random.SeedSequence([int(seed) % 2**32, index]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state, constant_liar=False)


def _pruner(prune: bool) -> Any:
    import optuna

    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                       n_warmup_steps=PRUNER_WARMUP_EPOCHS)


def _check_study(study: Any, config: TuneConfig) -> None:
    from raml_cli.train.checkpoint import signature_differences

    signature = config.signature()
    stored = study.user_attrs.get(_STUDY_ATTR)
    if stored is None:
        if study.trials:
            raise InputError(f"The study {config.study!r} in {config.storage_path} was not made "
                             "by raml tune. Give another --study or --storage.")
        study.set_user_attr(_STUDY_ATTR, signature)
    elif stored != signature:
        raise InputError(
            f"The study {config.study!r} in {config.storage_path} is a search with other "
            f"options ({signature_differences(stored, signature)}). Run it with its original "
            "options to continue it, or give another --study NAME (or --storage) for a new "
            "search."
        )


def _ended(study: Any) -> int:
    """Trials that count: complete, pruned, or failed and not queued again."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _fail_dead_trials(study: Any, storage: Any, name: str, output: Path,
                      reporter: Reporter) -> None:
    """Mark FAIL the RUNNING trials whose process (on this host) is gone; queue them again.

    A RUNNING trial of another host is left alone: it may still be running there.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or _alive(int(attrs.get("pid", -1))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        _remove_training_files(output / f"trial-{trial.number}", keep_log=True)
        reporter.warn(f"trial {trial.number} was interrupted (its process is gone): marked "
                      "failed and queued to run again")


def _trial_training(config: TuneConfig, trial: Any, values: dict[str, Any],
                    folder: Path) -> TrainingOptions:
    base = config.training
    name = "student.safetensors" if config.role == "student" else "teacher.safetensors"
    return replace(
        base, **values, output=folder / name, resume=False, monitor=config.objective,
        val_every=base.val_every or 1,
        tensorboard=None if base.tensorboard is None
        else Path(base.tensorboard) / f"trial-{trial.number}")


def _run_trial(study: Any, config: TuneConfig, reporter: Reporter) -> None:
    import optuna
    from optuna.trial import TrialState

    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    values = {p.name: p.suggest(trial) for p in config.space}
    folder = Path(config.output) / f"trial-{trial.number}"
    if folder.exists():
        shutil.rmtree(folder)  # a stale folder of an earlier, deleted study
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in values.items())
    reporter.log(f"trial {trial.number}: {shown}")
    training = _trial_training(config, trial, values, folder)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[config.objective], step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        result = _train(config.role, training, reporter, report)
    except optuna.TrialPruned:
        trial.set_user_attr("model", None)
        study.tell(trial, state=TrialState.PRUNED)
        _remove_training_files(folder, keep_log=True)
        reporter.log(f"trial {trial.number}: pruned")
        return
    except TrainingError as err:  # diverged: a result of these options, not a crash
        trial.set_user_attr("error", str(err))
        study.tell(trial, state=TrialState.FAIL)
        _remove_training_files(folder, keep_log=True)
        reporter.warn(f"trial {trial.number} failed: {err}")
        return
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(values, user_attrs={"retry_of": trial.number})
        raise
    kept = result.kept or {}
    metrics = kept.get("metrics") or result.validations[-1]["metrics"]
    value = float(metrics[config.objective])
    trial.set_user_attr("model", str(result.output))
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("kept_epoch", kept.get("epoch"))
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("seconds", round(result.seconds, 2))
    best_before = _best_trial(study)
    study.tell(trial, value)
    reporter.log(f"trial {trial.number}: {config.objective} {100 * value:.2f}")
    if not config.keep_all:
        if best_before is None or value > best_before.value:
            if best_before is not None:
                _remove_training_files(Path(config.output) / f"trial-{best_before.number}",
                                       keep_log=True)
        else:
            _remove_training_files(folder, keep_log=True)


def _train(role: str, training: TrainingOptions, reporter: Reporter, report: Any) -> Any:
    if role == "student":
        from raml_cli.train.distill import distill_result

        return distill_result(training, reporter, on_validation=report)  # type: ignore[arg-type]
    from raml_cli.train.teacher import train_teacher_result

    return train_teacher_result(training, reporter, on_validation=report)  # type: ignore[arg-type]


def _best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _remove_training_files(folder: Path, keep_log: bool) -> None:
    """Delete a trial's model, checkpoint and caches (its log stays unless asked)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if keep_log and path.name.endswith(".log.jsonl"):
            continue
        if path.is_file():
            path.unlink()


def _finish(study: Any, config: TuneConfig, ran: int) -> TuneResult:
    from raml_cli.tune.plot import plot_trials

    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0.0), r["number"]))
    best = _best_trial(study)
    result = TuneResult(study=config.study, storage=config.storage_path,
                        objective=config.objective, trials=rows, ran=ran)
    output = Path(config.output)
    if best is not None:
        result.best = {"number": best.number, "value": best.value, "params": dict(best.params),
                       "model": best.user_attrs.get("model"),
                       "metrics": best.user_attrs.get("metrics")}
        result.best_json = output / "best.json"
        atomic_write_text(result.best_json, json.dumps(dict(best.params), indent=2) + "\n")
    result.plot = plot_trials(rows, config.space, config.objective, output / "trials.png")
    return result


def _trial_row(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "params": dict(trial.params), "epochs": attrs.get("epochs"),
            "kept_epoch": attrs.get("kept_epoch"), "seconds": attrs.get("seconds"),
            "retry_of": attrs.get("retry_of"), "given": bool(attrs.get("given")),
            "error": attrs.get("error")}


__all__ = ["OBJECTIVES", "TuneConfig", "TuneResult", "tune"]
