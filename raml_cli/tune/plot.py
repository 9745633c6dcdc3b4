"""``trials.png`` of ``raml tune``: the objective per trial, and per searched option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_output
from raml_cli.tune.space import Parameter


def plot_trials(rows: list[dict[str, Any]], space: list[Parameter], objective: str,
                path: Path) -> Path:
    """Draw the trials (``TuneResult.trials`` rows) into the PNG ``path``.

    Left: the objective (in %) of every complete or pruned trial by trial number, with the
    best so far as a line. Then one panel per searched option: the objective against the
    option's value (log axis for log ranges). Pruned trials are hollow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["number"])
    panels = 1 + len(space)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.2), squeeze=False)
    ax = axes[0][0]
    best, running = [], float("-inf")
    for r in scored:
        running = max(running, r["value"]) if r["state"] == "complete" else running
        best.append(100 * running if running > float("-inf") else float("nan"))
    _scatter(ax, [r["number"] for r in scored], scored)
    ax.step([r["number"] for r in scored], best, where="post", color="tab:orange",
            label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (%)")
    ax.legend(loc="best", fontsize=8)
    for ax, param in zip(axes[0][1:], space, strict=True):
        _scatter(ax, [r["params"].get(param.name) for r in scored], scored)
        if param.log:
            ax.set_xscale("log")
        ax.set_xlabel(param.name)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def _scatter(ax: Any, xs: list[Any], rows: list[dict[str, Any]]) -> None:
    for state, face in (("complete", "tab:blue"), ("pruned", "none")):
        chosen = [(x, 100 * r["value"]) for x, r in zip(xs, rows, strict=True)
                  if r["state"] == state and x is not None]
        if chosen:
            ax.scatter([c[0] for c in chosen], [c[1] for c in chosen], facecolors=face,
                       edgecolors="tab:blue", label=state)
    ax.grid(alpha=0.3)


__all__ = ["plot_trials"]
