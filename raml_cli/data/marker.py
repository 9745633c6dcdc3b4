"""The dataset marker file ``ROOT/NAME/raml-dataset.json``: proof that a dataset was verified.

``raml download`` writes it last, into the staging folder, just before the folder is
renamed into place (:mod:`raml_cli.data.prepare`); :func:`raml_cli.data.catalog.load_dataset`
refuses a catalogue dataset without it. This module alone reads and writes it.

Content (one JSON object): ``format`` (``raml-dataset``), ``format_version``, ``dataset``
(the catalogue name), ``data_dir`` (where the images and annotations are, relative to the
marker's folder, or absolute for an ``--archive`` folder verified where it is),
``layout``, ``splits`` (the ``splits`` object of ``raml download --json``), what was
verified and how (e.g. the archives' md5 or the toy's ``seed``), ``raml_version`` and
``verified_at``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raml_cli import __version__
from raml_cli.atomic import atomic_write_text

MARKER_NAME = "raml-dataset.json"
MARKER_FORMAT = "raml-dataset"
MARKER_VERSION = 1


def marker_path(folder: Path) -> Path:
    """The marker of the dataset folder ``folder``."""
    return Path(folder) / MARKER_NAME


def has_marker(folder: Path) -> bool:
    """Whether ``folder`` carries a marker file (valid or not: it is raml's folder)."""
    return marker_path(folder).exists()


def read_marker(folder: Path, name: str) -> dict[str, Any] | None:
    """The marker of dataset ``name`` in ``folder`` (``None`` if absent, unreadable or foreign)."""
    try:
        marker = json.loads(marker_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT
            or marker.get("dataset") != name or "splits" not in marker):
        return None
    return marker


def write_marker(folder: Path, name: str, *, data_dir: str, layout: str,
                 splits: dict[str, Any], details: dict[str, Any]) -> Path:
    """Write the marker of dataset ``name`` into ``folder`` (atomically); returns its path."""
    marker = {
        "format": MARKER_FORMAT, "format_version": MARKER_VERSION, "dataset": name,
        "data_dir": data_dir, "layout": layout, "splits": splits, **details,
        "raml_version": __version__,
        "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = marker_path(folder)
    atomic_write_text(path, json.dumps(marker, indent=2) + "\n")
    return path
