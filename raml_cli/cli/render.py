"""Rendering results: rich tables for people, JSON on stdout for pipelines."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def stdout_console() -> Console:
    return Console(file=sys.stdout, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout (NaN becomes null)."""
    sys.stdout.write(json.dumps(_json_safe(obj), indent=2) + "\n")
    sys.stdout.flush()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _json_safe(obj.item())
    return obj


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals (``0.7043`` -> ``70.43``)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * value:.2f}"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                caption: str | None = None) -> None:
    """A rich table on stdout; right-aligned columns after the first."""
    table = Table(title=title, caption=caption, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    stdout_console().print(table)


def print_training_result(result: Any, title: str, loss_label: str, val_label: str,
                          json_out: bool) -> None:
    """Report a finished training run (teacher or student); only rank 0 prints under torchrun.

    Args:
        result: the loop's ``TrainingResult`` (``to_dict()``, ``output``, ``log``, ``epochs``,
            ``steps``, ``final_loss``, ``images_per_second``, ``validations``, ``best``).
        title: the table's title.
        loss_label: what the final loss is (e.g. ``final loss``).
        val_label: the prefix of validation rows (e.g. ``val`` or ``val asymmetric``).
        json_out: print ``result.to_dict()`` as JSON instead of the table.
    """
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        print_json(result.to_dict())
        return
    rows = [["model", str(result.output)], ["log", str(result.log)],
            ["epochs / steps", f"{result.epochs} / {result.steps}"],
            [loss_label, f"{result.final_loss:.4f}"],
            ["images/s (last epoch)", f"{result.images_per_second:.1f}"]]
    if result.validations:
        last = result.validations[-1]
        rows += [[f"{val_label} {k} (epoch {last['epoch']})",
                  f"{v:.4f}" if k.endswith("cosine") else percent(v)]  # cosines: not %
                 for k, v in last["metrics"].items()]
        best, kept = result.best, getattr(result, "kept", None) or {}
        key = kept.get("metric", "recall@1")
        if kept.get("keep") == "best":
            rows += [[f"saved: best {val_label} {key} (epoch {kept['epoch']})",
                      percent(kept["metrics"].get(key))]]
        elif best is not None and best["metrics"].get(key, 0.0) > \
                last["metrics"].get(key, 0.0):
            rows += [[f"best {val_label} {key} (epoch {best['epoch']}; not saved)",
                      percent(best["metrics"].get(key))]]
        if getattr(result, "stopped_early", False):
            rows += [["stopped early (--patience)", f"after epoch {result.epochs}"]]
    print_table(title, ["", "value"], rows)


def print_tune_result(result: Any, params: Sequence[str], json_out: bool) -> None:
    """Report a finished search: its trials best first, the best options and the files."""
    if json_out:
        print_json(result.to_dict())
        return
    rows = []
    for trial in result.trials:
        values = [_short(trial["params"].get(name)) for name in params]
        note = "given" if trial["given"] else (f"re-run of {trial['retry_of']}"
                                               if trial["retry_of"] is not None else "")
        rows.append([trial["number"], trial["state"], percent(trial["value"]), *values,
                     "-" if trial["kept_epoch"] is None else trial["kept_epoch"],
                     "-" if trial["seconds"] is None else f"{trial['seconds']:.1f}", note])
    print_table(f"trials of study {result.study!r} ({result.objective}, %)",
                ["trial", "state", result.objective, *params, "epoch kept", "seconds", ""],
                rows, caption=f"storage {result.storage}; {result.ran} trial(s) run now")
    if result.best is not None:
        best = result.best
        summary = [["best trial", str(best["number"])],
                   [f"best {result.objective}", percent(best["value"])],
                   *[[name, _short(value)] for name, value in best["params"].items()],
                   ["model", str(best["model"])], ["best options (--preset)",
                                                   str(result.best_json)],
                   ["picture", str(result.plot)]]
        print_table("best", ["", "value"], summary)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
