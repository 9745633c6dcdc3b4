"""Initial weights from a local file (``--init-weights FILE``), matched by name.

A file is read as safetensors, or as a PyTorch state dict through
``torch.load(..., weights_only=True)`` only: a pickle that needs anything but tensors and
plain containers is refused, never executed. Checkpoints that wrap the state dict
(``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped.

Names are matched against the embedding network's own names
(``backbone.<name in the source library>``, ``pooling.p``, ``whitening.weight``), after
removing common prefixes: ``module.`` (DataParallel / DDP), and ``backbone.``, ``model.``,
``encoder.``, ``net.``, ``body.``. So a plain timm/torchvision backbone state dict, a
DDP checkpoint, and a raml model file (whose pooling and whitening also load) all work.
A file in the naming of the ``efficientnet_pytorch`` package (``_conv_stem``,
``_blocks.N._depthwise_conv``) is renamed to timm's EfficientNet names first.

The classifier of an ImageNet checkpoint is reported as unexpected and left out; backbone
tensors absent from the file are reported as missing and keep their fresh initialisation.
A tensor whose shape differs is an error (the file is for another architecture).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from raml_cli.errors import FormatError, InputError

STRIP_PREFIXES = ("backbone.", "model.", "encoder.", "net.", "body.")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "module")


@dataclass
class WeightsReport:
    """What loading an initial-weights file did.

    Attributes:
        source: the file.
        loaded: names (in the network) that received a tensor from the file.
        missing: backbone names the file did not provide (left at their initialisation).
        unexpected: names in the file that matched nothing (e.g. the ImageNet classifier).
        renamed_from: a foreign naming scheme converted first (or ``None``).
    """

    source: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    renamed_from: str | None = None

    def summary(self, limit: int = 8) -> str:
        """A few lines for people: counts and the first names of each list."""
        lines = [f"init weights {self.source}: loaded {len(self.loaded)} tensors"
                 + (f" (renamed from {self.renamed_from} naming)" if self.renamed_from else "")]
        for title, names in (("missing (kept fresh)", self.missing),
                             ("unexpected (ignored)", self.unexpected)):
            if names:
                more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
                lines.append(f"  {title}: {len(names)}: {', '.join(names[:limit])}{more}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"source": str(self.source), "loaded": len(self.loaded),
                "missing": list(self.missing), "unexpected": list(self.unexpected),
                "renamed_from": self.renamed_from}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensors-by-name mapping from a safetensors or PyTorch (.pth/.pt/.bin) file.

    Raises:
        InputError: the file does not exist.
        FormatError: neither safetensors nor a weights-only PyTorch file, or no tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"The weights file {file} does not exist (or is a folder). Give the "
                         "path of a local safetensors or PyTorch state dict file.")
    with open(file, "rb") as handle:
        head = handle.read(16)
    if _looks_like_safetensors(head, file):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise FormatError(f"{file} is not a readable safetensors file ({err}).") from err
    else:
        state = _torch_load(file)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise FormatError(f"{file} holds no tensors; expected a state dict (name -> tensor).")
    return tensors


def _looks_like_safetensors(head: bytes, file: Path) -> bool:
    if file.suffix == ".safetensors":
        return True
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) > 9 and head[8:9] == b"{"


def _torch_load(file: Path) -> dict:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise FormatError(
            f"{file} cannot be read as a PyTorch state dict with weights_only=True "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
            "raml never unpickles arbitrary objects: save the weights as a plain state dict "
            "(torch.save(model.state_dict(), FILE)) or as safetensors."
        ) from err
    for _ in range(3):  # unwrap {"state_dict": {...}} style checkpoints
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise FormatError(f"{file} holds a {type(obj).__name__}, not a state dict "
                          "(a mapping from parameter names to tensors).")
    return obj


def _candidates(key: str) -> list[str]:
    while key.startswith("module."):
        key = key[len("module."):]
    out = [key, "backbone." + key]
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            out.append("backbone." + key[len(prefix):])
    return out


def _is_buffer_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def load_init_weights(network: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Copy tensors from ``path`` into ``network`` (an EmbeddingNetwork) by name.

    Returns:
        A :class:`WeightsReport`; call ``.summary()`` to show it.

    Raises:
        InputError: nothing matched, or a matched tensor has another shape.
    """
    file = Path(path)
    source = read_state_dict(file)
    target = network.state_dict()
    renamed_from = None
    if "_conv_stem.weight" in source:
        source = _rename_efficientnet_pytorch(source, target)
        renamed_from = "efficientnet_pytorch"
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    wrong_shape: list[str] = []
    for key, tensor in source.items():
        name = next((c for c in _candidates(key) if c in target), None)
        if name is None:
            if not _is_buffer_counter(key):
                unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(target[name].shape):
            wrong_shape.append(f"{key} {tuple(tensor.shape)} vs {name} "
                               f"{tuple(target[name].shape)}")
            continue
        matched[name] = tensor
    if wrong_shape:
        raise InputError(
            f"{file} does not fit this network: {len(wrong_shape)} tensor(s) have another "
            f"shape (first: {'; '.join(wrong_shape[:3])}). It was probably saved from another "
            "architecture: pick the matching --architecture, or another file."
        )
    backbone_loaded = [n for n in matched if n.startswith("backbone.")]
    if not backbone_loaded:
        first = ", ".join(list(source)[:5])
        raise InputError(
            f"None of the {len(source)} tensors in {file} matched a backbone parameter by name "
            f"(first names in the file: {first}; in the network: "
            f"{', '.join(list(target)[:3])}). The file must be a state dict of the same "
            "architecture, from timm (plain names) or torchvision (with a torchvision/ "
            "architecture)."
        )
    with torch.no_grad():
        for name, tensor in matched.items():
            target[name].copy_(tensor.to(target[name].dtype))
    missing = [n for n in target if n.startswith("backbone.") and n not in matched
               and not _is_buffer_counter(n)]
    return WeightsReport(file, sorted(matched), missing, unexpected, renamed_from)


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_EFFNET_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                  "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


def _rename_efficientnet_pytorch(source: dict[str, torch.Tensor],
                                 target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` keys to timm's EfficientNet names.

    That package numbers its blocks flat (``_blocks.0`` .. ``_blocks.15``); timm groups
    them by stage (``blocks.0.0`` .. ``blocks.6.0``), in the same order, so the i-th flat
    block is the i-th ``blocks.s.j`` of the target network.
    """
    pattern = re.compile(r"^backbone\.blocks\.(\d+)\.(\d+)\.")
    stage_blocks = sorted({(int(m.group(1)), int(m.group(2)))
                           for m in map(pattern.match, target) if m})
    expands = {int(m.group(1)) for m in map(re.compile(r"^_blocks\.(\d+)\._expand_conv").match,
                                             source) if m}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            index = int(parts[1])
            table = _EFFNET_EXPAND if index in expands else _EFFNET_NO_EXPAND
            if index < len(stage_blocks) and parts[2] in table:
                s, j = stage_blocks[index]
                out[f"blocks.{s}.{j}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = tensor
                continue
        elif parts[0] in _EFFNET_TOP:
            out[".".join([_EFFNET_TOP[parts[0]], *parts[1:]])] = tensor
            continue
        out[key] = tensor
    return out
