"""The ONNX export of a query model, made once and kept: what ``raml search`` runs.

onnxruntime encodes a query faster than torch on the CPU (docs/export.md), but exporting
a ``.safetensors`` model costs seconds (resnet50: about 10). So the first search with a
model exports it, as ``raml export --dynamic-batch`` would (checked against torch within
1e-4, written atomically), into ``$XDG_CACHE_HOME/raml/onnx`` (``~/.cache/raml/onnx`` by
default), and every later search with the same model file at the same resolution opens
that file. The file name holds the model file's sha256, the resolution and raml's version,
so an edited model or another raml never meets a stale export; each file is also checked
against the model's identity when it is opened. An export that fails (the network does
not convert, or onnxruntime's rows differ) is recorded beside it (``.failed``), so that
``--runtime auto`` falls back to torch at once the next time instead of trying again.

The folder can be deleted at any time; it only costs the exports again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raml_cli import __version__
from raml_cli.atomic import atomic_output, raml_cache_dir
from raml_cli.errors import ExportError, RamlError
from raml_cli.progress import NULL_REPORTER, Reporter

#: Characters of the model's sha256 in a cached file's name.
KEY_DIGITS = 24


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/raml/onnx`` (``~/.cache/raml/onnx`` by default)."""
    return raml_cache_dir("onnx")


@dataclass(frozen=True)
class CachedExport:
    """Where the export of one model at one resolution lives in the cache.

    Attributes:
        path: the ``.onnx`` file (float32 input, dynamic batch).
        failed: the record of a failed export (its text is the reason).
    """

    path: Path
    failed: Path

    @classmethod
    def of(cls, sha256: str, res: int, cache_dir: str | os.PathLike | None = None
           ) -> CachedExport:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        stem = f"{sha256[:KEY_DIGITS]}-{int(res)}px-raml{__version__}"
        return cls(folder / f"{stem}.onnx", folder / f"{stem}.failed")

    def failure(self) -> str | None:
        """The reason an earlier export failed, or ``None``."""
        try:
            return self.failed.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return None

    def valid_for(self, sha256: str, res: int) -> Any | None:
        """The cached file's :class:`~raml_cli.export.file.OnnxModelInfo` when it is an
        export of the model ``sha256`` at ``res`` px with float input and a dynamic batch;
        ``None`` when it is missing or anything else (it is then exported again)."""
        from raml_cli.export.convert import FLOAT_INPUT
        from raml_cli.export.file import read_onnx_info

        if not self.path.is_file():
            return None
        try:
            info = read_onnx_info(self.path)
        except (RamlError, OSError):
            return None
        if (info.sha256 != sha256 or info.resolution != int(res) or not info.dynamic_batch
                or info.input_format != FLOAT_INPUT):
            return None
        return info


def writable_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` exists or can be made, and files can be created in it."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cached_onnx(model: str | os.PathLike, sha256: str, res: int, *,
                cache_dir: str | os.PathLike | None = None,
                reporter: Reporter | None = None) -> Any | None:
    """The :class:`~raml_cli.export.file.OnnxModelInfo` (``.path``: the file) of the checked
    ONNX export of the model file ``model`` (whose sha256 is ``sha256``) at ``res`` px,
    exporting it into the cache first when it is not there; ``None`` when it is not there
    and the cache folder cannot be written.

    Raises:
        InputError: the extra is missing.
        ExportError: the export failed (also recorded, see :meth:`CachedExport.failure`).
    """
    from raml_cli.export.engine import export_model

    reporter = reporter or NULL_REPORTER
    entry = CachedExport.of(sha256, res, cache_dir)
    cached = entry.valid_for(sha256, res)
    if cached is not None:
        reporter.log(f"onnxruntime runs the cached export {entry.path}")
        return cached
    if not writable_folder(entry.path.parent):
        return None
    reporter.log(f"exporting {model} at {res} px to ONNX for onnxruntime, once: later "
                 f"searches reuse {entry.path}")
    try:
        written = export_model(model, entry.path, res=res, dynamic_batch=True,
                               reporter=reporter)
    except ExportError as err:
        _record_failure(entry, str(err))
        raise
    return written.info


def _record_failure(entry: CachedExport, reason: str) -> None:
    try:
        with atomic_output(entry.failed) as tmp:
            tmp.write_text(reason + "\n", encoding="utf-8")
    except (OSError, RamlError):  # a record that cannot be written only costs a retry
        pass
