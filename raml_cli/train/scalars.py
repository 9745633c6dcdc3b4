"""TensorBoard scalars: the run log's numbers mirrored as TensorBoard events.

The JSONL log (:mod:`raml_cli.train.runlog`) stays the source of truth; with
``--tensorboard DIR`` the loop also hands every record to :class:`TensorBoardScalars`,
which writes (``torch.utils.tensorboard``, the optional ``tensorboard`` package):

==========================  ===========================================  ===============
tag                         value                                        x axis
==========================  ===========================================  ===============
``train/loss``              loss of an optimiser step (every 10 steps)   optimiser step
``train/lr``                learning rate (of the first parameter group) optimiser step
``train/images_per_s``      training throughput                          optimiser step
``epoch/loss``              mean loss of the epoch (+ the task's terms)  epoch
``epoch/images_per_s``      throughput of the epoch                      epoch
``val/<metric>``            every validation metric (``val/recall@1``)   epoch
==========================  ===========================================  ===============
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from raml_cli.errors import InputError

#: Keys of ``epoch`` records that are not scalars to plot.
_NOT_SCALARS = {"time", "event", "epoch", "step", "seconds"}


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or an error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            "--tensorboard needs the tensorboard package, which is not installed. Install it "
            "with `pip install 'raml[tensorboard]'` (or `pip install tensorboard`), or drop "
            "--tensorboard: the run log (.log.jsonl) has the same numbers and `raml log` "
            "draws them."
        ) from None
    return SummaryWriter


class TensorBoardScalars:
    """Writes the scalars of run-log records into TensorBoard event files under ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"The TensorBoard folder {folder} cannot be created ({err}). "
                             "Choose another --tensorboard folder.") from None
        self.writer = summary_writer_class()(log_dir=str(folder))

    def write(self, record: dict[str, Any]) -> None:
        """Add the scalars of one run-log record (other events are ignored)."""
        event = record.get("event")
        if event == "step":
            for key in ("loss", "lr", "images_per_s"):
                self._add(f"train/{key}", record.get(key), record["step"])
        elif event == "epoch":
            for key, value in record.items():
                if key not in _NOT_SCALARS:
                    self._add(f"epoch/{key}", value, record["epoch"])
        elif event == "val":
            for key, value in record.get("metrics", {}).items():
                self._add(f"val/{key}", value, record["epoch"])
        elif event == "end":
            self.writer.flush()

    def _add(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.writer.add_scalar(tag, float(value), int(step))

    def close(self) -> None:
        self.writer.close()


__all__ = ["TensorBoardScalars", "summary_writer_class"]
