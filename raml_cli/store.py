"""Embedding files (``*.h5``): the one module that reads and writes them.

Schema (DESIGN.md, "Embedding files"):

==================  ==========================================================
``/embeddings``     float32 ``[N, D]``, rows L2-normalised, chunked by rows
``/labels``         int64 ``[N]``, class id per row (``-1`` where unknown)
``/paths``          variable-length UTF-8 strings ``[N]``, relative image paths
root attributes     ``format`` = ``raml-embeddings``, ``format_version`` = 1,
                    ``model_sha256``, ``role``, ``architecture``, ``resolution``,
                    ``dataset``, ``split``, ``raml_version``
==================  ==========================================================

Root attributes added by ``raml embed``: ``scales`` (JSON list of the scales of the
resolution the vectors were averaged over; ``[1.0]`` for plain single-scale vectors, also
when missing) and ``scale_power``.

Optional extras written by ``raml embed --skip-bad``: ``/skipped`` (paths left out)
and the root attribute ``num_skipped``.

Rows that are not unit length (beyond ``UNIT_TOLERANCE``) are re-normalised on
read with a warning, so vectors from other tools can be evaluated; a zero row,
NaN or Inf is an error.

Writing is atomic: :func:`write_embeddings` and :class:`EmbeddingWriter` write
to a temporary (or ``.partial``) name and rename when complete. The streaming
writer appends rows as they are computed, so memory does not grow with N, and
an interrupted ``.partial`` file can be resumed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from raml_cli import __version__
from raml_cli.atomic import ensure_writable_parent, partial_path, temporary_sibling
from raml_cli.errors import DataError, FormatError, InputError, RamlError

FORMAT = "raml-embeddings"
FORMAT_VERSION = 1
ROOT_ATTRIBUTES = (
    "format",
    "format_version",
    "model_sha256",
    "role",
    "architecture",
    "resolution",
    "dataset",
    "split",
    "raml_version",
)
UNIT_TOLERANCE = 1e-3
DEFAULT_CHUNK_ROWS = 1024
_STR = h5py.string_dtype(encoding="utf-8")


@dataclass
class EmbeddingSet:
    """The content of one embeddings file, in memory.

    Attributes:
        embeddings: float32 ``[N, D]``, unit rows.
        labels: int64 ``[N]`` (``-1`` = unknown).
        paths: ``N`` image paths relative to the dataset root.
        attrs: the root attributes (plain Python values).
        source: the file it was read from, if any.
        renormalized: how many rows were re-normalised on read.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    renormalized: int = 0

    @property
    def num(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def _clean_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def default_attributes(**values: Any) -> dict[str, Any]:
    """Root attributes with every required key present (unknown ones as empty strings)."""
    attrs: dict[str, Any] = {key: "" for key in ROOT_ATTRIBUTES}
    attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                  "raml_version": __version__, "resolution": 0})
    for key, value in values.items():
        attrs[key] = "" if value is None else value
    return attrs


def _write_attrs(handle: h5py.File, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        handle.attrs[key] = value


def _validate_arrays(embeddings: np.ndarray, labels: np.ndarray, paths: Sequence[str]) -> None:
    if embeddings.ndim != 2:
        raise InputError(f"Embeddings must be a [N, D] matrix, got shape {embeddings.shape}.")
    if labels.shape != (embeddings.shape[0],) or len(paths) != embeddings.shape[0]:
        num_labels = labels.shape[0] if labels.ndim == 1 else f"shape {labels.shape}"
        raise InputError(
            f"Row counts differ: {embeddings.shape[0]} embeddings, {num_labels} labels, "
            f"{len(paths)} paths."
        )


def _check_finite_rows(embeddings: np.ndarray, paths: Sequence[str]) -> None:
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"The model gave NaN or infinite values for {int((~finite).sum())} image(s), the "
            f"first {paths[first]}; nothing was written under the final name. The model's "
            "weights or its normalisation (mean, std) are broken: retrain it or use another "
            "model file.")


def _check_utf8_paths(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8",
                                                                         "backslashreplace")
            raise InputError(f"The image name {shown} is not valid UTF-8, and embeddings files "
                             "store names as UTF-8. Rename the file, then run again.") from None


def _check_storage(dataset: h5py.Dataset, name: str, file: Path) -> None:
    """Refuse a dataset that declares more rows than the file holds (a forged header
    would otherwise make the reader allocate its declared size)."""
    declared = int(dataset.size) * int(dataset.dtype.itemsize)
    stored = int(dataset.id.get_storage_size())
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    # Compressed data can be smaller than it reads; beyond 1000:1 it is not embeddings.
    if declared > (stored * 1000 if filtered else stored):
        raise FormatError(f"/{name} in {file} declares shape {dataset.shape} ({declared} "
                          f"bytes) but the file holds only {stored} bytes of it: the file is "
                          "truncated or damaged. Re-create it with `raml embed`.")


def write_embeddings(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    labels: np.ndarray | Sequence[int],
    paths: Sequence[str],
    attrs: dict[str, Any] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Path:
    """Write a whole embeddings file atomically (for data already in memory)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    _validate_arrays(embeddings, labels, paths)
    target = ensure_writable_parent(path)
    writer = EmbeddingWriter(target, dim=embeddings.shape[1], attrs=attrs, chunk_rows=chunk_rows,
                             _partial=temporary_sibling(target))
    try:
        writer.append(embeddings, labels, paths)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return target


class EmbeddingWriter:
    """Stream rows into an embeddings file; rename into place on :meth:`finalize`.

    Rows go to ``OUT.h5.partial`` as they are appended (datasets grow by chunks of
    rows), so memory stays flat. With ``resume=True`` an existing ``.partial``
    file whose attributes match is continued: :attr:`rows_done` says how many rows
    it already holds, and the caller skips those inputs.

    >>> import tempfile, pathlib, numpy as np
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "db.h5"
    >>> w = EmbeddingWriter(out, dim=2, attrs={"role": "teacher"})
    >>> w.append(np.array([[1.0, 0.0]], np.float32), [3], ["a.jpg"])
    >>> w.finalize()
    >>> read_embeddings(out).labels.tolist()
    [3]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        attrs: dict[str, Any] | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        resume: bool = False,
        _partial: Path | None = None,
    ) -> None:
        self.path = ensure_writable_parent(path)
        self.partial = _partial or partial_path(self.path)
        self.dim = int(dim)
        self.attrs = default_attributes(**(attrs or {}))
        self.rows_done = 0
        self._skipped: list[str] = []
        if resume and self.partial.exists():
            self._handle = self._reopen()
        else:
            self._handle = self._create(chunk_rows)

    def _create(self, chunk_rows: int) -> h5py.File:
        handle = h5py.File(self.partial, "w")
        rows = max(1, int(chunk_rows))
        handle.create_dataset("embeddings", shape=(0, self.dim), maxshape=(None, self.dim),
                              dtype=np.float32, chunks=(rows, self.dim))
        handle.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64,
                              chunks=(rows,))
        handle.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(rows,))
        handle.create_dataset("skipped", shape=(0,), maxshape=(None,), dtype=_STR,
                              chunks=(256,))
        _write_attrs(handle, self.attrs)
        handle.attrs["complete"] = False
        handle.flush()
        return handle

    def _reopen(self) -> h5py.File:
        try:
            handle = h5py.File(self.partial, "a")
        except OSError as err:
            raise FormatError(
                f"The unfinished file {self.partial} cannot be resumed ({err}). Delete it and "
                "run again without --resume."
            ) from err
        stored = {k: _clean_attr(v) for k, v in handle.attrs.items()}
        mismatched = [
            key for key in ("model_sha256", "resolution", "dataset", "split", "role")
            if str(stored.get(key, "")) != str(self.attrs.get(key, ""))
        ]
        if scales_of(stored) != scales_of(self.attrs) or (
                float(stored.get("scale_power", 1.0)) != float(self.attrs.get("scale_power",
                                                                              1.0))):
            mismatched.append("scales")
        if mismatched or handle["embeddings"].shape[1] != self.dim:
            handle.close()
            raise InputError(
                f"The unfinished file {self.partial} was started with other settings "
                f"({', '.join(mismatched) or 'embedding size'} differ), so it cannot be resumed. "
                "Run with the original settings, or delete it and start again."
            )
        n = min(handle["embeddings"].shape[0], handle["labels"].shape[0], handle["paths"].shape[0])
        for name in ("embeddings", "labels", "paths"):
            handle[name].resize(n, axis=0)
        self.rows_done = n
        self._skipped = [_decode(p) for p in handle["skipped"][()]]
        return handle

    def append(self, embeddings: np.ndarray, labels: Sequence[int] | np.ndarray,
               paths: Sequence[str]) -> None:
        """Append rows (unit vectors) and flush them to disk."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        _validate_arrays(embeddings, labels, paths)
        if embeddings.shape[1] != self.dim:
            raise InputError(f"Expected {self.dim}-d rows, got {embeddings.shape[1]}-d.")
        n = embeddings.shape[0]
        if n == 0:
            return
        _check_finite_rows(embeddings, paths)
        _check_utf8_paths(paths)
        start, stop = self.rows_done, self.rows_done + n
        handle = self._handle
        # Lengths are grown last-to-first so a crash mid-append leaves at most a
        # longer embeddings dataset, which _reopen truncates to the common length.
        handle["embeddings"].resize(stop, axis=0)
        handle["embeddings"][start:stop] = embeddings
        handle["labels"].resize(stop, axis=0)
        handle["labels"][start:stop] = labels
        handle["paths"].resize(stop, axis=0)
        handle["paths"][start:stop] = list(paths)
        handle.flush()
        self.rows_done = stop

    def add_skipped(self, paths: Sequence[str]) -> None:
        """Record inputs left out (``--skip-bad``); stored as ``/skipped``."""
        if not paths:
            return
        self._skipped.extend(paths)
        ds = self._handle["skipped"]
        ds.resize(len(self._skipped), axis=0)
        ds[len(self._skipped) - len(paths):] = list(paths)
        self._handle.flush()

    @property
    def skipped(self) -> list[str]:
        return list(self._skipped)

    def written_paths(self) -> list[str]:
        """The ``paths`` of the rows already in the file (those of a resumed ``.partial``)."""
        return [_decode(p) for p in self._handle["paths"][:self.rows_done]]

    def finalize(self) -> Path:
        """Mark the file complete, close it and rename it onto the output path."""
        handle = self._handle
        if self.rows_done == 0:
            self.abort()
            raise InputError(f"No embeddings were produced, so {self.path} was not written.")
        handle.attrs["num_skipped"] = len(self._skipped)
        del handle.attrs["complete"]
        handle.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without finalizing; the ``.partial`` file stays for ``--resume``."""
        if self._handle.id.valid:
            self._handle.close()

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        self.close()
        try:
            self.partial.unlink()
        except FileNotFoundError:
            pass


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _open(path: str | os.PathLike) -> h5py.File:
    file = Path(path)
    if not file.exists():
        raise InputError(f"The embeddings file {file} does not exist. Create it with "
                         "`raml embed MODEL.safetensors -o FILE.h5`.")
    if file.is_dir():
        raise InputError(f"{file} is a folder, not an embeddings file (.h5).")
    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise FormatError(
            f"{file} is not a readable HDF5 file ({err}). raml reads embeddings files "
            "written by `raml embed` (DESIGN.md schema: /embeddings, /labels, /paths)."
        ) from err


def read_attributes(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of an embeddings file, validated for ``format``."""
    with _open(path) as handle:
        return _check_header(handle, Path(path))


def _check_header(handle: h5py.File, path: Path) -> dict[str, Any]:
    attrs = {k: _clean_attr(v) for k, v in handle.attrs.items()}
    fmt = attrs.get("format")
    if fmt != FORMAT:
        hint = "it has no `format` attribute" if fmt is None else f"its format is {fmt!r}"
        raise FormatError(f"{path} is not a raml embeddings file: {hint} (expected "
                          f"{FORMAT!r}). Write embeddings with `raml embed`.")
    try:
        version = int(attrs.get("format_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version != FORMAT_VERSION:
        raise FormatError(f"{path} has format_version {attrs.get('format_version')!r}; this "
                          f"raml reads version {FORMAT_VERSION}. Re-create it with this raml "
                          "version's `raml embed`.")
    if "complete" in attrs:
        raise FormatError(f"{path} is an unfinished embeddings file. Finish it with "
                          "`raml embed ... --resume`, or delete it.")
    return attrs


def read_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """Read and validate a whole embeddings file.

    Raises :class:`FormatError` with a plain explanation for: not HDF5, missing
    ``format`` or datasets, wrong dtype or rank, row-count mismatch, NaN/Inf,
    zero rows, an empty file. Non-unit rows are re-normalised (counted in
    ``renormalized``).
    """
    file = Path(path)
    with _open(file) as handle:
        try:
            embeddings, labels, paths, attrs = _read_all(handle, file)
        except KeyError as err:  # e.g. a soft link to nothing at /labels
            raise FormatError(f"{file} has a broken entry ({err}): one of /embeddings, "
                              "/labels, /paths is a link to nothing. Re-create the file with "
                              "`raml embed`.") from err
    embeddings, renormalized = _check_rows(embeddings, file)
    return EmbeddingSet(embeddings, labels, paths, attrs, file, renormalized)


def _read_all(handle: h5py.File, file: Path
              ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    attrs, emb_ds, lab_ds, path_ds = _checked_datasets(handle, file)
    embeddings = np.asarray(emb_ds[()], dtype=np.float32)
    return embeddings, _read_labels(lab_ds, file), [_decode(p) for p in path_ds[()]], attrs


def _checked_datasets(handle: h5py.File, file: Path
                      ) -> tuple[dict[str, Any], h5py.Dataset, h5py.Dataset, h5py.Dataset]:
    """The header and the three datasets of an embeddings file, with every check on their
    presence, kind, dtype, rank, row counts and stored size (nothing is read yet)."""
    attrs = _check_header(handle, file)
    missing = [name for name in ("embeddings", "labels", "paths") if name not in handle]
    if missing:
        raise FormatError(f"{file} lacks the dataset(s) {', '.join('/' + m for m in missing)}"
                          " that every raml embeddings file has.")
    not_data = [name for name in ("embeddings", "labels", "paths")
                if not isinstance(handle[name], h5py.Dataset)]
    if not_data:
        raise FormatError(f"In {file}, {', '.join('/' + m for m in not_data)} is not a "
                          "dataset (found a group). Re-create the file with `raml embed`.")
    emb_ds, lab_ds, path_ds = handle["embeddings"], handle["labels"], handle["paths"]
    if emb_ds.ndim != 2:
        raise FormatError(f"/embeddings in {file} has rank {emb_ds.ndim}; expected a "
                          "[N, D] matrix.")
    if emb_ds.dtype.kind != "f":
        raise FormatError(f"/embeddings in {file} has dtype {emb_ds.dtype}; expected float32.")
    if lab_ds.ndim != 1 or lab_ds.dtype.kind not in "iu":
        raise FormatError(f"/labels in {file} must be a 1-d integer array; found dtype "
                          f"{lab_ds.dtype} with shape {lab_ds.shape}.")
    if path_ds.ndim != 1 or h5py.check_string_dtype(path_ds.dtype) is None:
        raise FormatError(f"/paths in {file} must be a 1-d array of strings; found dtype "
                          f"{path_ds.dtype} with shape {path_ds.shape}.")
    n = emb_ds.shape[0]
    if lab_ds.shape[0] != n or path_ds.shape[0] != n:
        raise FormatError(f"{file} is inconsistent: {n} embeddings, {lab_ds.shape[0]} "
                          f"labels and {path_ds.shape[0]} paths. Re-create it with "
                          "`raml embed`.")
    if n == 0:
        raise FormatError(f"{file} holds no embeddings (0 rows).")
    for name, dataset in (("embeddings", emb_ds), ("labels", lab_ds), ("paths", path_ds)):
        _check_storage(dataset, name, file)
    return attrs, emb_ds, lab_ds, path_ds


def _read_labels(dataset: h5py.Dataset, file: Path) -> np.ndarray:
    """``/labels`` as int64, refusing unsigned values that int64 cannot hold."""
    raw_labels = np.asarray(dataset[()])
    if raw_labels.dtype.kind == "u" and raw_labels.size and \
            raw_labels.max() > np.iinfo(np.int64).max:
        raise FormatError(f"/labels in {file} holds {int(raw_labels.max())}, beyond the "
                          "int64 class ids of the format (it would wrap to a negative, "
                          "unknown, label). Store labels as int64.")
    return raw_labels.astype(np.int64)


def scales_of(attrs: dict[str, Any]) -> list[float]:
    """The ``scales`` attribute as floats (``[1.0]`` when the file has none)."""
    value = attrs.get("scales", "")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else [1.0]
        except ValueError:
            return []
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return []


def is_current(path: str | os.PathLike, *, model_sha256: str, resolution: int,
               paths: Sequence[str], scales: Sequence[float] = (1.0,)) -> bool:
    """Whether ``path`` is a complete embeddings file of exactly these images by this model.

    True when the file exists, is a finished raml embeddings file, records
    ``model_sha256`` and ``resolution``, and its ``/paths`` are ``paths`` in order: what a
    pipeline needs to know to reuse the file instead of embedding again. Never raises for
    a missing or unreadable file (that is simply not current).
    """
    file = Path(path)
    if not file.is_file():
        return False
    try:
        with _open(file) as handle:
            attrs = _check_header(handle, file)
            if (attrs.get("model_sha256") != model_sha256
                    or str(attrs.get("resolution")) != str(int(resolution))
                    or scales_of(attrs) != [float(s) for s in scales]):
                return False
            stored = handle.get("paths")
            if not isinstance(stored, h5py.Dataset) or stored.shape != (len(paths),):
                return False
            return [_decode(p) for p in stored[()]] == list(paths)
    except (RamlError, OSError, KeyError, ValueError):
        return False


def iter_embedding_blocks(path: str | os.PathLike, block_rows: int = 4096
                          ) -> Iterator[tuple[int, np.ndarray]]:
    """The ``/embeddings`` of a complete file as ``(start, float32 [B, D] rows)`` blocks.

    Memory stays at one block whatever the file's size (e.g. to measure a file just
    written by ``raml embed``). Rows are returned as stored, without the checks of
    :func:`read_embeddings`.
    """
    file = Path(path)
    with _open(file) as handle:
        _check_header(handle, file)
        if not isinstance(handle.get("embeddings"), h5py.Dataset):
            raise FormatError(f"{file} lacks the dataset /embeddings that every raml "
                              "embeddings file has.")
        dataset = handle["embeddings"]
        for start in range(0, dataset.shape[0], block_rows):
            yield start, np.asarray(dataset[start:start + block_rows], dtype=np.float32)


def _check_rows(embeddings: np.ndarray, file: Path) -> tuple[np.ndarray, int]:
    # One pass for both checks: a row's sum of squares is finite exactly when the row is,
    # unless squaring overflows float32 (values above ~1.8e19), which the exact check
    # behind it tells apart.
    squares = np.einsum("nd,nd->n", embeddings, embeddings)
    finite = np.isfinite(squares)
    if not finite.all():
        finite = np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise FormatError(f"{file} has NaN or Inf values in {bad.size} row(s) (first: row "
                              f"{int(bad[0])}). Re-create it; a model that outputs NaN needs "
                              "retraining.")
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    else:
        norms = np.sqrt(squares)
    zero = norms < 1e-12
    if zero.any():
        raise FormatError(f"{file} has {int(zero.sum())} all-zero row(s) (first: row "
                          f"{int(np.flatnonzero(zero)[0])}), which cannot be L2-normalised.")
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    count = int(off.sum())
    if count:
        embeddings = embeddings / norms[:, None].astype(np.float32)
    return embeddings, count


@dataclass
class EmbeddingRows:
    """Everything of an embeddings file except the vectors (for streaming readers).

    Attributes:
        num, dim: the shape of ``/embeddings``.
        labels: int64 ``[N]``; ``paths``: ``N`` strings; ``attrs``: the root attributes.
    """

    num: int
    dim: int
    labels: np.ndarray
    paths: list[str]
    attrs: dict[str, Any]
    source: Path


def read_rows(path: str | os.PathLike) -> EmbeddingRows:
    """The labels, paths, attributes and shape of an embeddings file, without its vectors.

    The same checks as :func:`read_embeddings` on everything but the values of the rows
    (those are checked block by block by :func:`iter_checked_blocks`), so memory does not
    grow with ``N x D``.
    """
    file = Path(path)
    with _open(file) as handle:
        try:
            attrs, emb_ds, lab_ds, path_ds = _checked_datasets(handle, file)
            labels = _read_labels(lab_ds, file)
            paths = [_decode(p) for p in path_ds[()]]
        except KeyError as err:  # e.g. a soft link to nothing at /labels
            raise FormatError(f"{file} has a broken entry ({err}): one of /embeddings, "
                              "/labels, /paths is a link to nothing. Re-create the file with "
                              "`raml embed`.") from err
        return EmbeddingRows(int(emb_ds.shape[0]), int(emb_ds.shape[1]), labels, paths, attrs,
                             file)


def iter_checked_blocks(path: str | os.PathLike, block_rows: int = 4096
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Like :func:`iter_embedding_blocks`, with the row checks of :func:`read_embeddings`.

    NaN, Inf or an all-zero row is a :class:`FormatError`; rows off unit length are
    re-normalised. Memory stays at one block.
    """
    file = Path(path)
    for start, block in iter_embedding_blocks(file, block_rows):
        try:
            rows, _ = _check_rows(block, file)
        except FormatError as err:
            raise FormatError(f"{err} (in the block of rows from {start})") from None
        yield start, rows
