"""Typed options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Where networks run: auto (CUDA when present), cpu, cuda, "
                 "cuda:N.", show_default=True),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed; the same seed gives the same result on the "
                      "same device.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or status lines on stderr.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (nothing else there).")
]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Folder that holds the datasets (one sub-folder each).")
]
DatasetOpt = Annotated[
    str,
    typer.Option("--dataset", help="A dataset name (toy, cub200, cars196, sop) or a path: an "
                 "image folder with one sub-folder per class, or a CSV of path,label[,split]."),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="DataLoader worker processes that decode images.")
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per forward pass.")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from where it stopped.")
]
