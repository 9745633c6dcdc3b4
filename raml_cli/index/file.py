"""Index files (``*.index``): the one module that reads and writes them.

An index file is a safetensors file (no pickle anywhere: loading reads a JSON header and
raw arrays) holding a faiss index and what a search needs to answer in the database's
own terms:

====================  ===================================================================
``faiss``             uint8 ``[B]``: the index as :func:`faiss.serialize_index` writes it
``labels``            int64 ``[N]``: the database's ``/labels``
``path_offsets``      int64 ``[N + 1]``: row ``i``'s path is ``path_bytes[o[i]:o[i+1]]``
``path_bytes``        uint8 ``[P]``: the database's ``/paths``, UTF-8, concatenated
metadata (strings)    ``format`` = ``raml-index``, ``format_version`` = ``1``, ``kind``,
                      ``factory``, ``metric`` = ``inner_product``, ``num_rows``, ``dim``,
                      ``search_params`` (JSON), ``database`` (JSON: the embeddings file's
                      root attributes), ``source``, ``build`` (JSON), ``faiss_sha256``,
                      ``raml_version``
====================  ===================================================================

``faiss_sha256`` is checked on load, so a damaged file is refused rather than searched.
Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from raml_cli import __version__
from raml_cli.atomic import atomic_output
from raml_cli.errors import FormatError, InputError

FORMAT = "raml-index"
FORMAT_VERSION = 1
TENSORS = ("faiss", "labels", "path_offsets", "path_bytes")


@dataclass
class IndexInfo:
    """The metadata of an index file (what ``raml search --json`` reports as ``index``).

    Attributes:
        kind: ``flat``, ``hnsw``, ``ivf`` or ``ivfpq``; ``factory`` the faiss string.
        num_rows, dim: the database's shape.
        search_params: the default search parameters (``nprobe``, ``efSearch``).
        database: the root attributes of the embeddings file it was built from.
        source: that file's path, as given to ``raml index``.
        build: how it was built (seconds, seed, budget, reason, ``self_recall@10``, ...).
    """

    kind: str
    factory: str
    num_rows: int
    dim: int
    search_params: dict[str, int] = field(default_factory=dict)
    database: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    build: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    size_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "kind": self.kind,
                "factory": self.factory, "num_rows": self.num_rows, "dim": self.dim,
                "search_params": self.search_params, "database": self.database,
                "source": self.source, "build": self.build, "size_bytes": self.size_bytes}


@dataclass
class LoadedIndex:
    """An index file in memory: the faiss index, the database's labels and paths, the info."""

    index: faiss.Index
    labels: np.ndarray
    paths: list[str]
    info: IndexInfo


def _encode_paths(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [p.encode("utf-8") for p in paths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()


def _decode_paths(offsets: np.ndarray, data: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def write_index_file(path: str | os.PathLike, index: faiss.Index, labels: np.ndarray,
                     paths: list[str], info: IndexInfo) -> Path:
    """Write ``index`` with the database's ``labels``, ``paths`` and ``info``, atomically."""
    from safetensors.numpy import save_file

    blob = faiss.serialize_index(index)
    offsets, path_bytes = _encode_paths(paths)
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": info.kind,
        "factory": info.factory, "metric": "inner_product", "num_rows": str(info.num_rows),
        "dim": str(info.dim), "search_params": json.dumps(info.search_params),
        "database": json.dumps(info.database, default=str), "source": info.source,
        "build": json.dumps(info.build, default=str),
        "faiss_sha256": hashlib.sha256(blob.data).hexdigest(), "raml_version": __version__,
    }
    tensors = {"faiss": blob, "labels": np.ascontiguousarray(labels, dtype=np.int64),
               "path_offsets": offsets, "path_bytes": path_bytes}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _open_checked(path: str | os.PathLike) -> tuple[Path, Any]:
    from safetensors import safe_open

    file = Path(path)
    if not file.exists():
        raise InputError(f"The index file {file} does not exist. Build it with "
                         "`raml index DB.h5 -o FILE.index`.")
    if file.is_dir():
        raise InputError(f"{file} is a folder, not an index file. Build one with "
                         "`raml index DB.h5 -o FILE.index`.")
    try:
        handle = safe_open(str(file), framework="numpy")
    except Exception as err:  # safetensors raises its own error types for any bad header
        raise FormatError(f"{file} is not a raml index file: it cannot be read as "
                          f"safetensors ({err}). Build one with `raml index DB.h5 -o "
                          f"{file.name}`.") from None
    return file, handle


def _parse_info(file: Path, metadata: dict[str, str] | None, keys: set[str]) -> IndexInfo:
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        hint = "it has no `format` entry" if found is None else f"its format is {found!r}"
        raise FormatError(f"{file} is not a raml index file: {hint} (expected {FORMAT!r}). "
                          "Build one with `raml index DB.h5 -o FILE.index`.")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise FormatError(f"{file} has format_version {metadata.get('format_version')!r}; "
                          f"this raml reads version {FORMAT_VERSION}. Rebuild it with this "
                          "raml's `raml index`.")
    missing = [name for name in TENSORS if name not in keys]
    try:
        info = IndexInfo(
            kind=metadata["kind"], factory=metadata["factory"],
            num_rows=int(metadata["num_rows"]), dim=int(metadata["dim"]),
            search_params=json.loads(metadata["search_params"]),
            database=json.loads(metadata["database"]), source=metadata.get("source", ""),
            build=json.loads(metadata["build"]), path=file, size_bytes=file.stat().st_size)
    except (KeyError, ValueError) as err:
        missing.append(f"metadata {err}")
    if missing:
        raise FormatError(f"{file} is a damaged raml index file (missing or unreadable: "
                          f"{', '.join(missing)}). Rebuild it with `raml index`.")
    return info


def read_index_info(path: str | os.PathLike) -> IndexInfo:
    """The metadata of an index file (the faiss structure is not read)."""
    file, handle = _open_checked(path)
    with handle:
        return _parse_info(file, handle.metadata(), set(handle.keys()))


def read_index_file(path: str | os.PathLike) -> LoadedIndex:
    """Load an index file; refuse, with a message, anything that is not a sound one."""
    file, handle = _open_checked(path)
    with handle:
        metadata = handle.metadata() or {}
        info = _parse_info(file, metadata, set(handle.keys()))
        try:
            blob = handle.get_tensor("faiss")
            labels = handle.get_tensor("labels")
            offsets = handle.get_tensor("path_offsets")
            path_bytes = handle.get_tensor("path_bytes")
        except Exception as err:  # a truncated or overwritten body
            raise FormatError(f"{file} is a damaged raml index file ({err}). Rebuild it "
                              "with `raml index`.") from None
    damaged = f"{file} is a damaged raml index file"
    if hashlib.sha256(blob.data).hexdigest() != metadata.get("faiss_sha256"):
        raise FormatError(f"{damaged}: its faiss structure does not match the checksum it "
                          "was written with. Rebuild it with `raml index`.")
    n = info.num_rows
    if labels.shape != (n,) or offsets.shape != (n + 1,) or \
            int(offsets[-1]) != path_bytes.shape[0] or (np.diff(offsets) < 0).any():
        raise FormatError(f"{damaged}: its labels or paths do not describe {n} rows. "
                          "Rebuild it with `raml index`.")
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        paths = _decode_paths(offsets, path_bytes)
    except (RuntimeError, UnicodeDecodeError) as err:
        raise FormatError(f"{damaged} ({str(err).splitlines()[0][:200]}). Rebuild it with "
                          "`raml index`.") from None
    if index.ntotal != n or index.d != info.dim:
        raise FormatError(f"{damaged}: the faiss index holds {index.ntotal} x {index.d} "
                          f"rows, the metadata says {n} x {info.dim}. Rebuild it.")
    return LoadedIndex(index, labels.astype(np.int64), paths, info)
