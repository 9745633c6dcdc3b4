"""``raml log``: a training run's curves and summary from its JSONL log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import JsonOpt

EXAMPLES = """
Examples:

    raml log teacher.log.jsonl

    raml log student.log.jsonl -o student-curves.png

    raml log tuned/trial-3/student.log.jsonl --json
"""


def command(
    run_log: Annotated[Path, typer.Argument(help="The run log (.log.jsonl) written beside a "
                                            "model by train-teacher or distill.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help=(
        "Draw loss, learning rate and validation curves into this PNG."))] = None,
    json_out: JsonOpt = False,
) -> None:
    """Summarise a training run from its log, and draw its curves (-o curves.png).

    For people without TensorBoard: the JSONL log holds every number of the run.
    """
    from raml_cli.cli.render import percent, print_json, print_table
    from raml_cli.train.curves import load_run_log, plot_run, summarize_run

    records = load_run_log(run_log)
    summary = summarize_run(records)
    if output is not None:
        summary["picture"] = str(plot_run(records, output))
    if json_out:
        print_json(summary)
        return
    state = "finished" if summary["finished"] else "unfinished (no end record)"
    rows = [["role", str(summary["role"])], ["state", state + (
        ", stopped early" if summary["stopped_early"] else "")],
            ["epochs / steps", f"{summary['epochs']} / {summary['steps']}"],
            ["last epoch loss", "-" if summary["last_loss"] is None
             else f"{summary['last_loss']:.4f}"],
            ["training seconds", f"{summary['seconds']:.1f}"]]
    best, kept = summary["best"], summary["kept"]
    if best is not None:
        rows.append([f"best val {best['metric']} (epoch {best['epoch']})",
                     percent(best["metrics"].get(best["metric"]))])
    if kept is not None:
        rows.append(["model file holds", f"{kept['keep']} (epoch {kept['epoch']})"])
    if output is not None:
        rows.append(["picture", str(output)])
    print_table(f"run log {run_log}", ["", "value"], rows)
    if summary["validations"]:
        keys = list(summary["validations"][-1]["metrics"])
        print_table("validations", ["epoch", *keys],
                    [[v["epoch"], *[f"{v['metrics'][k]:.4f}" if k.endswith("cosine")
                                    else percent(v["metrics"].get(k)) for k in keys]]
                     for v in summary["validations"]])
