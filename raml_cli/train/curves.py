"""A run log's curves and summary (``raml log``): for people without TensorBoard.

Reads the JSONL log (:func:`raml_cli.train.runlog.read_log`) and draws, in one PNG: the
loss per optimiser step (``step`` records) with the epoch means, the learning rate, and
every validation metric per epoch (fractions in %, cosines as they are).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_output
from raml_cli.errors import InputError
from raml_cli.train.runlog import read_log


def load_run_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run log, or an error saying what the file is not."""
    target = Path(path)
    if not target.is_file():
        raise InputError(f"The run log {target} does not exist. A training writes it beside "
                         "its model: teacher.safetensors -> teacher.log.jsonl.")
    try:
        records = read_log(target)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"The run log {target} cannot be read ({err}).") from None
    if not any(isinstance(r, dict) and r.get("event") == "start" for r in records):
        raise InputError(f"{target} is not a raml run log (no 'start' record). Give the "
                         ".log.jsonl file written beside a model by train-teacher or distill.")
    return [r for r in records if isinstance(r, dict)]


def summarize_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run in numbers: role, epochs, steps, last loss, validations, best, state."""
    start = next(r for r in records if r.get("event") == "start")
    epochs = [r for r in records if r.get("event") == "epoch"]
    vals = [r for r in records if r.get("event") == "val"]
    end = next((r for r in reversed(records) if r.get("event") == "end"), None)
    kept = (end or {}).get("kept") or {}
    metric = kept.get("metric") or "recall@1"
    best = max(vals, key=lambda r: (r["metrics"].get(metric, -1.0), -r["epoch"]), default=None)
    return {
        "role": start.get("role"), "device": start.get("device"),
        "finished": end is not None,
        "stopped_early": any(r.get("event") == "early_stop" for r in records),
        "epochs": epochs[-1]["epoch"] if epochs else 0,
        "steps": epochs[-1]["step"] if epochs else 0,
        "last_loss": epochs[-1]["loss"] if epochs else None,
        "images_per_s": epochs[-1]["images_per_s"] if epochs else None,
        "seconds": sum(r.get("seconds", 0.0) for r in epochs),
        "validations": [{"epoch": r["epoch"], "metrics": r["metrics"]} for r in vals],
        "best": None if best is None else {"epoch": best["epoch"], "metric": metric,
                                           "metrics": best["metrics"]},
        "kept": kept or None,
    }


def plot_run(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Draw loss, learning rate and validation curves of a run log into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    vals = [r for r in records if r.get("event") == "val"]
    panels = 3 if vals else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False)
    loss, rate = axes[0][0], axes[0][1]
    if steps:
        loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6,
                  label="step")
        rate.plot([r["step"] for r in steps], [r["lr"] for r in steps])
    else:  # step records come every 10 optimiser steps: a short run may have none
        rate.text(0.5, 0.5, "no step records\n(logged every 10 optimiser steps)",
                  ha="center", va="center", transform=rate.transAxes, fontsize=9)
    if epochs:
        loss.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-",
                  label="epoch mean")
    loss.set_xlabel("optimiser step")
    loss.set_ylabel("loss")
    loss.legend(fontsize=8)
    rate.set_xlabel("optimiser step")
    rate.set_ylabel("learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if vals:
        ax = axes[0][2]
        keys = [k for k in vals[-1]["metrics"] if not k.endswith("cosine")]
        for key in keys:
            ax.plot([r["epoch"] for r in vals], [100 * r["metrics"][key] for r in vals], "o-",
                    label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation (%)")
        ax.legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


__all__ = ["load_run_log", "plot_run", "summarize_run"]
