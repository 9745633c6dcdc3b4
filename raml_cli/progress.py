"""Progress bars and status messages on stderr.

Engine functions take an optional :class:`Reporter`; the command line makes one
from ``--quiet``. Bars are drawn with rich on stderr, only when stderr is a
terminal (so logs and pipelines stay clean) and not quiet. Bars can nest: one
live display holds every open bar (the demo runs training inside a pipeline).

>>> reporter = Reporter(enabled=False)
>>> with reporter.track("embedding", total=3, unit="img") as bar:
...     bar.advance(3)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_stderr_console: Console | None = None


def stderr_console() -> Console:
    """The one rich console that writes to stderr (progress, logs, warnings)."""
    global _stderr_console
    if _stderr_console is None or _stderr_console.file is not sys.stderr:
        _stderr_console = Console(stderr=True)
    return _stderr_console


class Bar:
    """One progress bar; ``advance`` it and ``update`` the fields shown beside it."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task
        self.fields: dict[str, Any] = {}
        self.completed = 0

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields: Any) -> None:
        """Show ``key=value`` fields after the bar (e.g. ``loss=0.31``, ``img_s=212``)."""
        self.fields.update(fields)
        if self._progress is not None and self._task is not None:
            text = "  ".join(f"{k}={_format(v)}" for k, v in self.fields.items())
            self._progress.update(self._task, info=text)

    def set_total(self, total: int | None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Reporter:
    """Where long work reports progress and short status lines.

    ``enabled=None`` (the default) draws bars only when stderr is a terminal;
    ``quiet=True`` silences bars and :meth:`log`, but never :meth:`warn`.
    """

    def __init__(self, enabled: bool | None = None, quiet: bool = False) -> None:
        self.quiet = quiet
        if quiet:
            enabled = False
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._depth = 0

    @contextmanager
    def track(self, description: str, total: int | None = None, unit: str = "it") -> Iterator[Bar]:
        """A progress bar for one piece of long work (``total=None``: unknown length)."""
        if not self.enabled:
            yield Bar(None, None)
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=stderr_console(),
                transient=False,
            )
            self._progress.start()
        self._depth += 1
        task = self._progress.add_task(description, total=total, info="")
        try:
            yield Bar(self._progress, task)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._progress.stop()
                self._progress = None

    def log(self, message: str) -> None:
        """A status line on stderr (silenced by ``quiet``)."""
        if not self.quiet:
            stderr_console().print(message, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A warning on stderr; shown even when quiet."""
        stderr_console().print(f"[yellow]warning:[/yellow] {message}", highlight=False,
                               soft_wrap=True)


NULL_REPORTER = Reporter(enabled=False, quiet=True)
