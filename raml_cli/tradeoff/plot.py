"""The trade-off picture: retrieval quality against query cost (matplotlib, Agg backend).

One panel per cost axis: query GMACs (log scale) and, when every row has it, measured
batch-1 query latency. One line per student architecture across its query resolutions,
the naive baseline (the teacher's own queries at the small resolutions) as a dashed line,
the teacher at the database resolution as a star (the upper bound). The only module that
imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raml_cli.atomic import atomic_output

#: How each kind of row is drawn: (legend label template, marker, line style).
STUDENT_KINDS = ("resolution", "architecture", "hybrid")


def _series(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]], dict]]:
    """``(label, rows sorted by cost, style)`` per line of the picture."""
    series = []
    archs = list(dict.fromkeys(r["student_arch"] for r in rows if r["kind"] in STUDENT_KINDS))
    for arch in archs:
        line = [r for r in rows if r["kind"] in STUDENT_KINDS and r["student_arch"] == arch]
        series.append((f"student {arch}", line, {"marker": "o", "linestyle": "-"}))
    naive = [r for r in rows if r["kind"] == "naive"]
    if naive:
        series.append(("naive (teacher@r -> teacher@R)", naive,
                       {"marker": "s", "linestyle": "--", "color": "grey"}))
    teacher = [r for r in rows if r["kind"] == "teacher"]
    if teacher:
        series.append(("teacher@R (upper bound)", teacher,
                       {"marker": "*", "linestyle": "none", "color": "black",
                        "markersize": 14}))
    return series


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path, title: str,
                  metric: str = "recall@1") -> Path:
    """Draw ``rows`` (``kind``, ``student_arch``, ``query_res``, ``query_gmacs``, ``metric``
    and optionally ``query_latency_ms["batch_1"]``) into the PNG ``path``, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    axes_keys = [("query_gmacs", "query GMACs per image (log scale)")]
    if rows and all((r.get("query_latency_ms") or {}).get("batch_1") for r in rows):
        axes_keys.append(("latency", "measured query latency, batch 1 (ms, log scale)"))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6.2 * len(axes_keys), 4.6),
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_keys, strict=True):
        for name, line, style in _series(rows):
            def cost(r: dict[str, Any], key: str = key) -> float:
                return r["query_latency_ms"]["batch_1"] if key == "latency" else r[key]
            line = sorted(line, key=cost)
            xs, ys = [cost(r) for r in line], [100 * r[metric] for r in line]
            ax.plot(xs, ys, label=name, **style)
            for r, x, y in zip(line, xs, ys, strict=True):
                ax.annotate(f"{r['query_res']}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # crowded labels on a short range
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric.replace('recall', 'R')} (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


__all__ = ["plot_tradeoff"]
