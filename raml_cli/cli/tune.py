"""``raml tune distill|train-teacher``: search a training's options with optuna.

Each sub-command takes every option of the training it tunes (the same names, help and
defaults: its parameters are those of ``raml distill`` / ``raml train-teacher``) plus the
search's own options; ``-o`` is the search's folder.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from raml_cli.cli import distill, train_teacher
from raml_cli.cli.options import JsonOpt, QuietOpt

HELP = ("Search a training's hyper-parameters with optuna (resumable: the study lives in an "
        "SQLite file; run the same command again to continue a killed search).")

EXAMPLES = """
Examples:

    raml tune distill --teacher teacher.safetensors --query-res 112 --trials 20 \\
        --storage tune.db -o tuned/

    raml tune train-teacher --dataset mydata/ --trials 10 --storage tune.db -o tuned/

    raml distill --teacher teacher.safetensors --query-res 112 --preset tuned/best.json
"""

#: Options of the training that the search sets itself.
_TAKEN = ("output", "resume", "quiet", "json_out")


def _search_options(
    trials: Annotated[int, typer.Option("--trials", min=1, help=(
        "Trials the study ends with (finished or pruned; trials of a killed run are re-run, "
        "not counted)."))] = 20,
    storage: Annotated[Path | None, typer.Option("--storage", help=(
        "The study's SQLite file (created when missing; a killed search continues from it). "
        "[default: OUT/study.db]"))] = None,
    study: Annotated[str, typer.Option("--study", help=(
        "The study's name, to keep several searches in one storage file."))] = "raml",
    space: Annotated[Path | None, typer.Option("--space", help=(
        'A JSON file of the searched options: {"lr": {"low": 1e-4, "high": 2e-4, "log": '
        'true}, "mode": {"choices": ["aug", "regression"]}}. [default: the reference\'s '
        "for distill (lr, lambda1, lambda2); lr and margin for teachers]"))] = None,
    objective: Annotated[str, typer.Option("--objective", help=(
        "The validation metric to maximise: map, recall@1 or map@r (asymmetric for distill, "
        "symmetric for teachers)."))] = "map",
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help=(
        "Stop a trial whose validation falls below the median of earlier trials at the same "
        "epoch (optuna's median pruner)."))] = True,
    keep_all: Annotated[bool, typer.Option("--keep-all", help=(
        "Keep every trial's model (default: only the best trial's)."))] = False,
    out: Annotated[Path, typer.Option("--output", "-o", help=(
        "The search's folder: trial-N/ per trial, best.json, trials.png."))] = Path("tuned"),
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The search's own options (a signature only)."""


def _tuning(module: Any, title: str) -> Any:
    """A command with the options of ``module.command`` (minus :data:`_TAKEN`) and the
    search's, that tunes the training ``module.config_from_options`` describes."""
    own = inspect.signature(_search_options).parameters
    training = inspect.signature(module.command).parameters
    hints = {**typing.get_type_hints(module.command, include_extras=True),
             **typing.get_type_hints(_search_options, include_extras=True)}
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
              for p in [*(training[n] for n in training if n not in _TAKEN), *own.values()]]

    def command(**given: Any) -> None:
        search = {name: given.pop(name) for name in own}
        if given.get("val_every") is None:
            given["val_every"] = 1  # a search needs a score per trial
        run_search(module.config_from_options(output=Path("unused"), resume=False, **given),
                   title=title, **search)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = (f"Search the options of `raml {title}` with optuna on the val classes "
                       "(trials train on fit); resumable.\n\nEvery option of `raml "
                       f"{title}` is accepted and is the base of every trial; the searched "
                       "ones vary. The first trial of a new study runs the given values. "
                       "Writes OUT/trial-N/, OUT/best.json (for --preset) and "
                       "OUT/trials.png.")
    return command


def run_search(training: Any, *, title: str, trials: int, storage: Path | None, study: str,
               space: Path | None, objective: str, prune: bool, keep_all: bool, out: Path,
               quiet: bool, json_out: bool) -> None:
    """Run the search and render its result."""
    from raml_cli.cli.render import print_tune_result
    from raml_cli.progress import Reporter
    from raml_cli.tune import TuneConfig, default_space, load_space, tune

    role = "student" if title == "distill" else "teacher"
    chosen = default_space(role) if space is None else load_space(space, type(training))
    result = tune(TuneConfig(training=training, space=chosen, trials=trials, output=out,
                             storage=storage, study=study, objective=objective, prune=prune,
                             keep_all=keep_all), Reporter(quiet=quiet))
    print_tune_result(result, [p.name for p in chosen], json_out)


#: ``(name, command, examples)`` of every sub-command (registered by ``cli/app.py``).
COMMANDS = [("distill", _tuning(distill, "distill"), EXAMPLES),
            ("train-teacher", _tuning(train_teacher, "train-teacher"), EXAMPLES)]
