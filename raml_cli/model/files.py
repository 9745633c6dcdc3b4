"""Model files (``*.safetensors``): the one module that reads and writes them.

Format (DESIGN.md, "Model files"): the tensors are the embedding network's
``state_dict`` in float32; the safetensors metadata (all values strings) holds

==================  ===========================================================
``format``          ``raml-model``
``format_version``  ``1``
``architecture``    backbone name as given to the factory (``resnet50``)
``pooling``         ``gem``, ``gemmp``, ``mac``, ``spoc`` or ``rmac``
``whitening``       output size of the whitening layer, ``0`` for none
``embedding_dim``   size of the output vector
``mean``, ``std``   JSON lists of 3 floats
``resolution``      the resolution the network was trained for (int)
``role``            ``teacher`` or ``student``
``teacher_sha256``  for a student: sha256 of its teacher's file (empty for a teacher)
``dataset``         training dataset name
``config``          JSON object of every training option
``raml_version``    version of the package that wrote it
==================  ===========================================================

Loading rebuilds the network from this metadata alone: no pickle, no network access
(the backbone is built without pretrained weights, then every tensor is loaded).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raml_cli import __version__
from raml_cli.atomic import atomic_output
from raml_cli.errors import FormatError, InputError
from raml_cli.model.limits import MAX_EMBEDDING_DIM, MAX_RESOLUTION
from raml_cli.model.network import EmbeddingNetwork, NetworkConfig, build_network

FORMAT = "raml-model"
FORMAT_VERSION = 1
ROLES = ("teacher", "student")
METADATA_KEYS = (
    "format", "format_version", "architecture", "pooling", "whitening", "embedding_dim",
    "mean", "std", "resolution", "role", "teacher_sha256", "dataset", "config",
    "raml_version",
)


@dataclass
class ModelInfo:
    """The metadata of a model file, parsed.

    Attributes:
        path: the file; ``sha256`` its hex digest (what embeddings files record).
        resolution: training resolution in pixels (the default of ``raml embed``).
        config: the training options (a dict), ``metadata`` the raw strings.
    """

    path: Path
    sha256: str
    architecture: str
    pooling: str
    whitening: int
    embedding_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int
    role: str
    teacher_sha256: str
    dataset: str
    config: dict[str, Any]
    raml_version: str
    format_version: int = FORMAT_VERSION
    metadata: dict[str, str] = field(default_factory=dict)

    def network_config(self) -> NetworkConfig:
        return NetworkConfig(self.architecture, pooling=self.pooling, whitening=self.whitening,
                             mean=self.mean, std=self.std)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``raml info --json``)."""
        return {
            "path": str(self.path), "sha256": self.sha256, "architecture": self.architecture,
            "pooling": self.pooling, "whitening": self.whitening,
            "embedding_dim": self.embedding_dim, "mean": list(self.mean),
            "std": list(self.std), "resolution": self.resolution, "role": self.role,
            "teacher_sha256": self.teacher_sha256, "dataset": self.dataset,
            "config": self.config, "raml_version": self.raml_version,
            "format_version": self.format_version,
        }


def file_sha256(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """The hex sha256 digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(
    path: str | os.PathLike,
    network: EmbeddingNetwork,
    *,
    resolution: int,
    role: str,
    dataset: str,
    config: dict[str, Any],
    teacher_sha256: str | None = None,
) -> Path:
    """Write ``network`` and its metadata to ``path`` atomically; returns ``path``.

    Args:
        resolution: the training resolution (pixels).
        role: ``teacher`` or ``student``.
        dataset: the training dataset's name.
        config: every training option (must be JSON-serialisable; Paths become strings).
        teacher_sha256: for a student, :func:`file_sha256` of its teacher file.
    """
    from safetensors.torch import save_file

    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}.")
    cfg = network.config
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": cfg.architecture,
        "pooling": cfg.pooling,
        "whitening": str(cfg.whitening),
        "embedding_dim": str(network.embedding_dim),
        "mean": json.dumps([float(v) for v in cfg.mean]),
        "std": json.dumps([float(v) for v in cfg.std]),
        "resolution": str(int(resolution)),
        "role": role,
        "teacher_sha256": teacher_sha256 or "",
        "dataset": str(dataset),
        "config": json.dumps(config, default=str, sort_keys=True),
        "raml_version": __version__,
    }
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone()
               for name, t in network.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Parse and validate the metadata of a model file (tensors are not read)."""
    file = _check_path(path)
    metadata, _ = _read_header(file)
    return _parse_metadata(file, metadata, file_sha256(file))


def load_model(path: str | os.PathLike,
               device: str | torch.device = "cpu") -> tuple[EmbeddingNetwork, ModelInfo]:
    """Rebuild the network stored in ``path`` (in eval mode, on ``device``).

    Raises:
        InputError: the file does not exist.
        FormatError: not safetensors, another ``format``, an unknown ``format_version``,
            missing or malformed metadata, or tensors that do not fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    file = _check_path(path)
    # One read: the weights and the recorded sha256 come from the same bytes, even if the
    # file is replaced meanwhile (and no memory map can fault on a file truncated under it).
    data = _read_bytes(file)
    metadata, _ = _header_of(file, data)
    info = _parse_metadata(file, metadata, hashlib.sha256(data).hexdigest())
    try:
        network = build_network(info.network_config(), init="none")
    except InputError as err:
        raise FormatError(f"{file} names a network this installation cannot build: {err}") \
            from err
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise FormatError(f"The tensors of {file} cannot be read ({err}); the file is "
                          "truncated or damaged. Re-create it with raml.") from err
    del data
    expected = network.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), first {wrong[0]}")
        if missing:
            parts.append(f"{len(missing)} missing tensor(s), first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), first {unexpected[0]}")
        raise FormatError(
            f"The tensors in {file} do not fit its metadata ({info.architecture}, "
            f"{info.pooling}, whitening {info.whitening}): {'; '.join(parts)}. The file was "
            "edited or written by another program; re-create it with raml."
        )
    network.load_state_dict(tensors, strict=True)
    if network.embedding_dim != info.embedding_dim:
        raise FormatError(f"{file} says embedding_dim {info.embedding_dim} but its network "
                          f"produces {network.embedding_dim}-d vectors; re-create the file.")
    return network.to(device).eval(), info


def _check_path(path: str | os.PathLike) -> Path:
    file = Path(path)
    if not file.exists():
        raise InputError(f"The model file {file} does not exist. Train one with `raml "
                         "train-teacher` or `raml distill`.")
    if file.is_dir():
        raise InputError(f"{file} is a folder, not a model file (.safetensors).")
    return file


#: safetensors' own limit on the JSON header.
_MAX_HEADER_BYTES = 100_000_000


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as err:
        raise InputError(f"Cannot read the model file {file}: {err.strerror}.") from err


def _read_header(file: Path) -> tuple[dict[str, str], list[str]]:
    """The metadata and tensor names of a safetensors file, reading only its header."""
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            header = handle.read(size) if 0 < size <= _MAX_HEADER_BYTES else b""
    except OSError as err:
        raise InputError(f"Cannot read the model file {file}: {err.strerror}.") from err
    return _header_of(file, prefix + header)


def _header_of(file: Path, data: bytes) -> tuple[dict[str, str], list[str]]:
    """Parse the header at the start of ``data`` (the safetensors layout: an 8-byte
    little-endian length, then that many bytes of JSON)."""
    try:
        if len(data) < 8:
            raise ValueError("shorter than a safetensors header")
        size = int.from_bytes(data[:8], "little")
        if not 0 < size <= _MAX_HEADER_BYTES or len(data) < 8 + size:
            raise ValueError(f"a header of {size} bytes does not fit the file")
        header = json.loads(data[8:8 + size].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ is not an object of strings")
    except (ValueError, UnicodeDecodeError) as err:
        if str(file).lower().endswith(".onnx"):
            raise FormatError(
                f"{file} is an ONNX file: only `raml search` runs those (`raml search "
                f"{file} --index ...`). This command needs the raml model file "
                "(.safetensors) the ONNX file was exported from.") from err
        raise FormatError(
            f"{file} is not a safetensors file ({err}). raml model files are written by "
            "`raml train-teacher` / `raml distill`; a PyTorch .pth state dict of a backbone "
            "can seed training with --init-weights instead."
        ) from err
    return dict(metadata), sorted(header)


def _parse_metadata(file: Path, metadata: dict[str, str], sha256: str) -> ModelInfo:
    fmt = metadata.get("format")
    if fmt != FORMAT:
        what = "has no `format` metadata" if fmt is None else f"has format {fmt!r}"
        raise FormatError(f"{file} is a safetensors file but not a raml model: it {what} "
                          f"(expected {FORMAT!r}). Use a file written by `raml train-teacher` "
                          "or `raml distill`.")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise FormatError(f"{file} has format_version {metadata.get('format_version')!r}; this "
                          f"raml ({__version__}) reads version {FORMAT_VERSION}. Use a raml "
                          "version that wrote it, or re-create the model.")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise FormatError(f"{file} lacks the metadata key(s) {', '.join(missing)} that every "
                          "raml model file has; it was edited or written by another program.")
    try:
        mean = _floats3(metadata["mean"])
        std = _floats3(metadata["std"])
        config = json.loads(metadata["config"])
        if not isinstance(config, dict):
            raise ValueError("config is not a JSON object")
        info = ModelInfo(
            path=file, sha256=sha256, architecture=metadata["architecture"],
            pooling=metadata["pooling"], whitening=int(metadata["whitening"]),
            embedding_dim=int(metadata["embedding_dim"]), mean=mean, std=std,
            resolution=int(metadata["resolution"]), role=metadata["role"],
            teacher_sha256=metadata["teacher_sha256"], dataset=metadata["dataset"],
            config=config, raml_version=metadata["raml_version"],
            format_version=int(metadata["format_version"]), metadata=dict(metadata))
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise FormatError(f"{file} has malformed metadata ({err}); re-create it with raml.") \
            from err
    if info.role not in ROLES:
        raise FormatError(f"{file} has role {info.role!r}; expected teacher or student.")
    problems = _metadata_problems(info)
    if problems:
        raise FormatError(f"{file} has impossible metadata: {'; '.join(problems)}. The file "
                          "was edited or damaged; re-create it with raml.")
    return info


def _metadata_problems(info: ModelInfo) -> list[str]:
    """What is out of range in parsed metadata (a network built from it would be wrong)."""
    problems = []
    if not 8 <= info.resolution <= MAX_RESOLUTION:
        problems.append(f"resolution {info.resolution} (expected 8 to {MAX_RESOLUTION})")
    if not all(math.isfinite(v) for v in info.mean):
        problems.append(f"mean {list(info.mean)} (expected finite numbers)")
    if not all(math.isfinite(v) and v > 0 for v in info.std):
        problems.append(f"std {list(info.std)} (expected finite numbers > 0)")
    if not 0 <= info.whitening <= MAX_EMBEDDING_DIM:
        problems.append(f"whitening {info.whitening} (expected 0 to {MAX_EMBEDDING_DIM})")
    if not 1 <= info.embedding_dim <= MAX_EMBEDDING_DIM:
        problems.append(f"embedding_dim {info.embedding_dim} (expected 1 to "
                        f"{MAX_EMBEDDING_DIM})")
    return problems


def _floats3(text: str) -> tuple[float, float, float]:
    values = json.loads(text)
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"expected a JSON list of 3 numbers, got {text!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def trained_with(path: str | os.PathLike, described: dict[str, Any], **expected: Any) -> bool:
    """Whether the model file ``path`` exists and records these options in its ``config``.

    ``described`` holds the options that define a training run (its JSON form is compared
    with the file's recorded ``config``); ``expected`` more recorded values, e.g.
    ``teacher_sha256``. What a pipeline (``raml demo``, ``raml tradeoff``) asks before it
    reuses a finished model instead of training it again. Never raises for a missing or
    unreadable file (that is simply not trained).
    """
    from raml_cli.errors import RamlError

    file = Path(path)
    if not file.is_file():
        return False
    try:
        info = read_model_info(file)
    except RamlError:
        return False
    recorded = {**info.config, "teacher_sha256": info.teacher_sha256}
    wanted = {**json.loads(json.dumps(described, default=str)), **expected}
    return all(recorded.get(key) == value for key, value in wanted.items())
