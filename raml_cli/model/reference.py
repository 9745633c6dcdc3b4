"""The reference implementation's released models, converted into raml model files.

The paper's code publishes ResNet-50 / GeM / whitening-512 networks as PyTorch ``.pth``
files (:data:`CATALOGUE`). One such file is a dict ``{"state_dict": ..., "meta": ...}``:

- ``meta``: ``architecture`` (a torchvision or timm name), ``pooling``, ``whitening``
  (output size, ``0`` for none), ``mean``, ``std``, ``outputdim``;
- ``state_dict``: ``backbone.*`` (for a torchvision ResNet, its children as an
  ``nn.Sequential`` without the final pool and classifier: ``backbone.0`` = conv1,
  ``backbone.1`` = bn1, ``backbone.4`` .. ``backbone.7`` = layer1 .. layer4; for a
  torchvision MobileNet / EfficientNet its ``features``; for a timm model its own names),
  ``pool.*`` (GeM's ``p``), ``whiten.weight`` / ``whiten.bias``.

Its forward is backbone -> pool -> L2 -> whiten -> L2, the same as
:class:`~raml_cli.model.network.EmbeddingNetwork`, so the conversion renames tensors
and nothing else. Every tensor of the file must find its place and every tensor of the
network must be filled, with the same shape: anything else is refused. The file is read
with ``torch.load(weights_only=True)``: one that needs more than tensors, plain
containers and numpy scalars is refused, never executed.

Role, resolution and dataset follow from a released model's name
(``cub-448r-...``: a teacher at 448 px trained on cub200; ``cub-S224r-T448r-...``: a
student at 224 px distilled from the 448 px teacher), or are given for a local file.

>>> released_model("cars-S224r-T448r-resnet50-512-gem-w").resolution
224
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raml_cli.atomic import raml_cache_dir
from raml_cli.errors import FormatError, InputError
from raml_cli.model.files import ROLES, ModelInfo, file_sha256, read_model_info, save_model
from raml_cli.model.limits import check_resolution_range
from raml_cli.model.network import EmbeddingNetwork, NetworkConfig, build_network
from raml_cli.model.pooling import POOLING_NAMES
from raml_cli.progress import NULL_REPORTER, Reporter

#: Where the reference publishes its models (``BASE + NAME + ".pth"``).
REFERENCE_BASE_URL = "http://ptak.felk.cvut.cz/personal/sumapave/public/"
#: The reference's dataset prefixes and raml's names for them.
REFERENCE_DATASETS = {"cub": "cub200", "cars": "cars196", "sop": "sop"}
#: The torchvision ResNet children, in the order of the reference's ``nn.Sequential``.
RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

_NAME = re.compile(
    r"^(?P<data>[a-z0-9]+)-(?:(?P<res>\d+)r|S(?P<sres>\d+)r-T(?P<tres>\d+)r)-"
    r"(?P<arch>[A-Za-z0-9_]+)-(?P<dim>\d+)-(?P<pool>[a-z]+)(?P<w>-w)?$")


@dataclass(frozen=True)
class ReleasedModel:
    """One model of the reference's naming scheme.

    Attributes:
        name: e.g. ``cub-448r-resnet50-512-gem-w``.
        role: ``teacher`` or ``student``.
        resolution: the training resolution in pixels (the student's query resolution).
        dataset: raml's dataset name (``cub200``, ``cars196``, ``sop``).
        teacher_resolution: for a student, the resolution of its teacher.
        architecture, pooling, whitening: what the name says of the network.
    """

    name: str
    role: str
    resolution: int
    dataset: str
    architecture: str
    pooling: str
    whitening: int
    teacher_resolution: int | None = None

    @property
    def url(self) -> str:
        return f"{REFERENCE_BASE_URL}{self.name}.pth"

    @property
    def teacher_name(self) -> str | None:
        """The released teacher a student was distilled from (``None`` for a teacher)."""
        if self.teacher_resolution is None:
            return None
        prefix = next(k for k, v in REFERENCE_DATASETS.items() if v == self.dataset)
        return (f"{prefix}-{self.teacher_resolution}r-{self.architecture}-{self.whitening}-"
                f"{self.pooling}{'-w' if self.whitening else ''}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "resolution": self.resolution,
                "dataset": self.dataset, "architecture": self.architecture,
                "pooling": self.pooling, "whitening": self.whitening,
                "teacher": self.teacher_name, "url": self.url, "size": None, "md5": None}


def parse_reference_name(name: str) -> ReleasedModel | None:
    """The :class:`ReleasedModel` a name of the reference's scheme describes, else ``None``."""
    match = _NAME.match(name)
    if not match or match["data"] not in REFERENCE_DATASETS:
        return None
    student = match["sres"] is not None
    return ReleasedModel(
        name=name, role="student" if student else "teacher",
        resolution=int(match["sres"] if student else match["res"]),
        dataset=REFERENCE_DATASETS[match["data"]], architecture=match["arch"],
        pooling=match["pool"], whitening=int(match["dim"]) if match["w"] else 0,
        teacher_resolution=int(match["tres"]) if student else None)


def _catalogue() -> dict[str, ReleasedModel]:
    names = [f"{d}-{r}r-resnet50-512-gem-w" for d in REFERENCE_DATASETS for r in (448, 224)]
    names += [f"{d}-S224r-T448r-resnet50-512-gem-w" for d in REFERENCE_DATASETS]
    return {n: parse_reference_name(n) for n in names}  # type: ignore[misc]


#: The released models (their size and md5 are not published: the import checks the
#: layout of the file instead).
CATALOGUE: dict[str, ReleasedModel] = _catalogue()


def released_model(name: str) -> ReleasedModel:
    """The catalogue entry ``name``; :class:`InputError` naming the catalogue otherwise."""
    if name not in CATALOGUE:
        raise InputError(f"{name!r} is neither a released model nor an existing file. "
                         f"Released models: {', '.join(CATALOGUE)} (`raml import --list`); "
                         "or give the path of a local .pth file.")
    return CATALOGUE[name]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/raml/released`` (``~/.cache/raml/released`` by default)."""
    return raml_cache_dir("released")


def fetch_released(model: ReleasedModel, cache_dir: Path | None = None,
                   mirrors: tuple[str, ...] = (), reporter: Reporter | None = None,
                   official: bool = True, **download_options: Any) -> Path:
    """Download a released model into ``cache_dir`` (resumable; a cached copy is reused).

    Args:
        mirrors: base URLs tried before the reference's own (``MIRROR/NAME.pth``).
        official: also try the reference's URL (after the mirrors).
        download_options: passed on to :func:`~raml_cli.data.download.download_file`.

    Raises:
        DownloadError: no URL delivered the file (the partial file is kept for a resume).
    """
    from raml_cli.data.download import download_file

    urls = [m.rstrip("/") + f"/{model.name}.pth" for m in mirrors]
    if official:
        urls.append(model.url)
    dest = Path(cache_dir or default_cache_dir()) / f"{model.name}.pth"
    return download_file(urls, dest, reporter=reporter, **download_options)


@dataclass
class ReferenceCheckpoint:
    """A reference ``.pth`` file, read weights-only: its tensors and its ``meta``."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]


def read_reference_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """Read a reference checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        InputError: the file does not exist.
        FormatError: not a weights-only PyTorch file, or not ``{"state_dict", "meta"}``.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"The checkpoint {file} does not exist (or is a folder). Give a "
                         "released model's name (`raml import --list`) or a local .pth file.")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise FormatError(
            f"{file} cannot be read as a weights-only PyTorch checkpoint ({type(err).__name__}: "
            f"{first}). raml never unpickles arbitrary objects: a released model holds only "
            "tensors, plain containers and numbers. Download it again, or use another file."
        ) from err
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) \
            or not isinstance(obj.get("meta"), dict):
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise FormatError(
            f"{file} is not a checkpoint of the reference implementation: expected a dict "
            f"with `state_dict` and `meta`, found {keys or 'an empty dict'}. A plain state dict "
            "of a backbone can seed training with --init-weights instead.")
    state = {_strip_module(k): v for k, v in obj["state_dict"].items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise FormatError(f"{file}'s state_dict holds non-tensor entries (first: "
                          f"{not_tensors[0]}); it is damaged or not a reference checkpoint.")
    return ReferenceCheckpoint(file, state, dict(obj["meta"]))


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def reference_network_config(checkpoint: ReferenceCheckpoint) -> NetworkConfig:
    """The raml :class:`NetworkConfig` of a reference checkpoint's ``meta`` and tensors."""
    meta, file = checkpoint.meta, checkpoint.path
    missing = [k for k in ("architecture", "pooling", "mean", "std") if k not in meta]
    if missing:
        raise FormatError(f"{file}'s meta lacks {', '.join(missing)}; every reference "
                          "checkpoint records them. The file is damaged or from another tool.")
    pooling = str(meta["pooling"]).lower()
    if pooling not in POOLING_NAMES:
        raise FormatError(f"{file} uses the pooling {pooling!r}, which this raml cannot build "
                          f"(it has {', '.join(POOLING_NAMES)}).")
    whiten = checkpoint.state_dict.get("whiten.weight")
    whitening = int(whiten.shape[0]) if whiten is not None and whiten.ndim == 2 else 0
    recorded = meta.get("whitening", 0)
    if not isinstance(recorded, bool) and recorded and int(recorded) != whitening:
        raise FormatError(f"{file}'s meta says whitening {recorded} but its whiten.weight gives "
                          f"{whitening or 'none'}; the file is damaged.")
    try:
        return NetworkConfig(_raml_architecture(str(meta["architecture"])), pooling=pooling,
                             whitening=whitening, mean=tuple(meta["mean"]),
                             std=tuple(meta["std"]))
    except (TypeError, ValueError, InputError) as err:
        raise FormatError(f"{file} has a meta raml cannot use: {err}") from err


def _raml_architecture(name: str) -> str:
    """The reference builds a torchvision model when torchvision has the name, else timm's."""
    import torchvision.models as tvm

    return f"torchvision/{name}" if hasattr(tvm, name) else name


def reference_key_map(network: EmbeddingNetwork) -> dict[str, str]:
    """``{reference name: raml name}`` for every tensor of ``network``'s state dict."""
    from raml_cli.model.backbone import TorchvisionFeatures, TorchvisionResNetFeatures

    backbone = network.backbone
    mapping: dict[str, str] = {}
    for name in network.state_dict():
        head, _, rest = name.partition(".")
        if head == "pooling":
            mapping[f"pool.{rest}"] = name
        elif head == "whitening":
            mapping[f"whiten.{rest}"] = name
        elif isinstance(backbone, TorchvisionResNetFeatures):
            child, _, tail = rest.partition(".")
            mapping[f"backbone.{RESNET_CHILDREN.index(child)}.{tail}"] = name
        elif isinstance(backbone, TorchvisionFeatures):
            mapping[f"backbone.{rest.removeprefix('features.')}"] = name
        else:  # a timm model: the reference keeps its own names
            mapping[name] = name
    return mapping


def reference_network(checkpoint: ReferenceCheckpoint) -> EmbeddingNetwork:
    """A raml network holding exactly the tensors of a reference checkpoint.

    Raises:
        FormatError: a tensor that does not fit, one missing, one left over, or not finite.
    """
    config = reference_network_config(checkpoint)
    try:
        network = build_network(config, init="none")
    except InputError as err:
        raise FormatError(f"{checkpoint.path} names a network raml cannot build: {err}") \
            from err
    mapping = reference_key_map(network)
    target = network.state_dict()
    source = checkpoint.state_dict
    missing = [k for k in mapping if k not in source]
    unexpected = [k for k in source if k not in mapping]
    wrong = [f"{k} {tuple(source[k].shape)} (expected {tuple(target[v].shape)})"
             for k, v in mapping.items() if k in source and source[k].shape != target[v].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(x)} {what}, first {x[0]}" for what, x in (
            ("shape mismatch(es)", wrong), ("missing tensor(s)", missing),
            ("unexpected tensor(s)", unexpected)) if x]
        raise FormatError(
            f"{checkpoint.path} does not have the layout of a reference {config.architecture} / "
            f"{config.pooling} / whitening {config.whitening} network: {'; '.join(parts)}. It "
            "is damaged, truncated or from another tool; download it again.")
    bad = [k for k, t in source.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FormatError(f"{checkpoint.path} holds NaN or infinite weights ({bad[0]}, "
                          f"{len(bad)} tensor(s)); the file is damaged. Download it again.")
    with torch.no_grad():
        for ref_name, raml_name in mapping.items():
            target[raml_name].copy_(source[ref_name].to(target[raml_name].dtype))
    outputdim = checkpoint.meta.get("outputdim")
    if isinstance(outputdim, int) and outputdim != network.embedding_dim:
        raise FormatError(f"{checkpoint.path}'s meta says outputdim {outputdim} but its network "
                          f"gives {network.embedding_dim}-d vectors; the file is damaged.")
    return network.eval()


@dataclass
class ImportResult:
    """What :func:`import_reference` wrote: the model file and its parsed metadata."""

    output: Path
    info: ModelInfo
    source: Path
    released: ReleasedModel | None

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "source": str(self.source),
                "released": self.released.name if self.released else None,
                "model": self.info.as_dict()}


def import_reference(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    role: str | None = None,
    resolution: int | None = None,
    dataset: str | None = None,
    teacher: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirrors: tuple[str, ...] = (),
    reporter: Reporter | None = None,
    **download_options: Any,
) -> ImportResult:
    """Convert a reference checkpoint (a released model's name or a local ``.pth``).

    Args:
        source: a :data:`CATALOGUE` name (downloaded into ``cache_dir``), or a path.
        output: the raml model file; default ``NAME.safetensors`` in the working folder.
        role, resolution, dataset: override (or, for a file not named in the reference's
            scheme, supply) what the name says.
        teacher: for a student, the raml model file of its teacher (an imported released
            teacher); its sha256 is recorded so that `raml search` pairs the two.
        mirrors: base URLs tried before the reference's own.

    Raises:
        InputError: unknown name, missing role/resolution/dataset, a bad teacher file.
        DownloadError: the released model could not be downloaded.
        FormatError: a file that is not a reference checkpoint of a network raml can build.
    """
    from raml_cli.atomic import check_outputs_apart, ensure_writable_parent

    reporter = reporter or NULL_REPORTER
    text = str(source)
    local = Path(text)
    if local.exists():
        released = parse_reference_name(local.name.removesuffix(".pth").removesuffix(".pt"))
    else:
        released = released_model(text)
    stem = released.name if released else local.name.split(".")[0]
    out = Path(output) if output is not None else Path(f"{stem}.safetensors")
    role, resolution, dataset = _fill(released, role, resolution, dataset, text)
    check_outputs_apart({"the model (-o)": out}, {"the checkpoint": local if local.exists()
                                                  else None, "--teacher": teacher})
    ensure_writable_parent(out)
    teacher_sha = _teacher_sha256(teacher, role, dataset) if teacher is not None else None
    if not local.exists():
        reporter.log(f"{released.name}: fetching the released model (cached in "
                     f"{Path(cache_dir or default_cache_dir())})")
        local = fetch_released(released, Path(cache_dir) if cache_dir else None, mirrors,
                               reporter, **download_options)
    checkpoint = read_reference_checkpoint(local)
    network = reference_network(checkpoint)
    if released is not None and (released.whitening != network.embedding_dim
                                 and released.whitening):
        reporter.warn(f"{local.name} is named for {released.whitening}-d vectors but its "
                      f"network gives {network.embedding_dim}-d ones.")
    if role == "student" and teacher_sha is None:
        reporter.warn("No --teacher given: the student records no teacher, so `raml search` "
                      "will not pair it with a database of its teacher without a check "
                      "override. Import its teacher and pass it with --teacher.")
    config = {"init": "reference", "imported_from": {
        "name": released.name if released else None,
        "url": released.url if released and not Path(text).exists() else None,
        "file": local.name, "sha256": file_sha256(local),
        "meta": _json_meta(checkpoint.meta)}}
    save_model(out, network, resolution=resolution, role=role, dataset=dataset, config=config,
               teacher_sha256=teacher_sha)
    return ImportResult(out, read_model_info(out), local, released)


def _fill(released: ReleasedModel | None, role: str | None, resolution: int | None,
          dataset: str | None, source: str) -> tuple[str, int, str]:
    role = role or (released.role if released else None)
    resolution = resolution or (released.resolution if released else None)
    dataset = dataset or (released.dataset if released else None)
    missing = [opt for opt, value in (("--role", role), ("--res", resolution),
                                      ("--dataset", dataset)) if not value]
    if missing:
        raise InputError(f"{source} is not named in the reference's scheme (e.g. "
                         "cub-448r-resnet50-512-gem-w.pth), so raml cannot tell what it is: "
                         f"give {', '.join(missing)} (e.g. --role teacher --res 448 "
                         "--dataset cub200).")
    if role not in ROLES:
        raise InputError(f"--role must be teacher or student, got {role!r}.")
    return role, check_resolution_range(resolution), str(dataset)


def _teacher_sha256(teacher: str | os.PathLike, role: str, dataset: str) -> str:
    if role != "student":
        raise InputError("--teacher is for importing a student (it names the model file of "
                         "the teacher it was distilled from); this import is a teacher.")
    info = read_model_info(teacher)
    if info.role != "teacher":
        raise InputError(f"--teacher {teacher} is a {info.role}; give the teacher's model file "
                         "(e.g. an imported cub-448r-resnet50-512-gem-w.safetensors).")
    if info.dataset != dataset:
        raise InputError(f"--teacher {teacher} was trained on {info.dataset}, this student on "
                         f"{dataset}: give the teacher of the same dataset.")
    return info.sha256


def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's meta with plain JSON values (numpy scalars become numbers)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "item") and not isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return {str(k): plain(v) for k, v in meta.items()}

