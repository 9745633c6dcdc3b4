"""The run log: ``OUT_STEM.log.jsonl`` beside a training's model file.

One JSON object per line, each with ``time`` (Unix seconds) and ``event``: ``start``
(role, the run's signature, the loop's options, world size, device), ``step`` (every
``log_every`` optimiser steps: loss, lr, images/s), ``epoch`` (mean loss, images/s,
seconds, the task's extra loss terms), ``val`` (the validation metrics), ``checkpoint``,
``resume``, ``nan`` (the loss that stopped the run) and ``end`` (the
:class:`~raml_cli.train.task.TrainingResult`). Rank 0 alone writes it; a run that starts
afresh replaces it, a resumed run appends to it. This module alone writes and reads it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def log_path(output: str | os.PathLike) -> Path:
    """The JSONL log beside a model output: ``teacher.safetensors`` -> ``teacher.log.jsonl``."""
    return Path(output).with_suffix(".log.jsonl")


def log_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line to the JSONL log ``path``."""
    record = {"time": round(time.time(), 3), **record}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a run log, in order (a torn last line, from a kill, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
