"""A network prepared once for inference: BatchNorm folded, eval mode, the device's layout.

Every path that only runs a network forward (``raml embed``, ``raml search``, ``raml info``,
``raml tradeoff``, validation inside training) goes through :func:`prepare_for_inference`:

1. **BatchNorm folding.** In eval mode a BatchNorm is a per-channel affine map,
   ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; when its input is the output of a
   convolution that nothing else reads, the map is folded into the convolution's weights
   and bias (``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``)
   and the BatchNorm is dropped: one pass over the activations less per layer. Which
   convolution feeds which BatchNorm is read from a :mod:`torch.fx` trace of the network
   (convolutions and BatchNorms kept as leaves), so a convolution whose output also goes
   elsewhere (it would see the folded values) is never folded. timm's ``BatchNormAct2d``
   (BatchNorm, then dropout and activation in one module) keeps its dropout and
   activation. A network that cannot be traced is left unfolded (``plan.note`` says why).
   Folding changes the arithmetic's rounding only: unit embeddings stay within 1e-5 of
   the unfolded network's (a test), and each preparation checks it on a small probe
   batch, keeping the unfolded network if the probe differs by more than 1e-4.
2. **Memory layout.** Channels-last on CUDA (tensor cores want NHWC). On the CPU the
   default is also channels-last for the folded network: on the development machine (a
   shared 2-core AVX-512 CPU, oneDNN) it was faster at every measured size for
   resnet50 (see docs/embed.md, "Query speed"); ``channels_last=False`` keeps NCHW.
3. **Convolutions packed for oneDNN** (CPU, channels-last): every plain ``nn.Conv2d``
   becomes a :class:`PackedConv2d`, which reorders its weight once per input shape into
   oneDNN's blocked layout instead of on every call (PyTorch's own path), and runs
   batch-1 inputs on oneDNN too. Checked on the probe batch like the folding; undone if
   it differs or an operator fails, and then the 1x1 convolutions run as matrix
   products (:class:`PointwiseGemm`) instead.
4. **Optional** ``torch.compile`` (``compile=True``; the commands' ``--compile``): one
   compilation per input shape on first use (seconds to minutes), then faster passes on
   some devices. It needs a working compiler toolchain; a failure is a clear error.

The training network is never modified: ``copy=True`` (the default) prepares a copy.
"""

from __future__ import annotations

import copy as copy_module
import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from raml_cli.devices import exact_float32
from raml_cli.errors import InputError

#: The largest difference between folded and unfolded unit embeddings the probe accepts.
PROBE_TOLERANCE = 1e-4
#: Side of the probe batch that checks a folded network against the unfolded one.
PROBE_SIDE = 64


@dataclass
class InferencePlan:
    """What :func:`prepare_for_inference` did to a network (kept as ``network.inference``).

    Attributes:
        folded: BatchNorm layers folded into the convolution before them.
        unfolded: BatchNorm layers left as they are (no single convolution before them).
        pointwise_gemm: 1x1 convolutions run as matrix products (:class:`PointwiseGemm`).
        packed_convs: convolutions run by oneDNN with weights reordered ahead of time
            (:class:`PackedConv2d`).
        channels_last: whether the network's weights (and inputs) are channels-last.
        compiled: whether the forward pass runs through ``torch.compile``.
        probe_difference: max abs difference of the probe batch, folded vs unfolded.
        note: why folding was skipped, if it was.
    """

    folded: int = 0
    unfolded: int = 0
    channels_last: bool = False
    compiled: bool = False
    probe_difference: float | None = None
    note: str | None = None
    pointwise_gemm: int = 0
    packed_convs: int = 0
    device: str = "cpu"

    def as_dict(self) -> dict:
        return {"folded_batchnorms": self.folded, "unfolded_batchnorms": self.unfolded,
                "channels_last": self.channels_last, "compiled": self.compiled,
                "probe_difference": self.probe_difference, "note": self.note,
                "pointwise_gemm": self.pointwise_gemm, "packed_convs": self.packed_convs,
                "device": self.device}


class _LeafTracer(torch.fx.Tracer):
    """An fx tracer that keeps convolutions and BatchNorms (and timm's untraceable layers)
    as single nodes."""

    def __init__(self) -> None:
        notrace_modules: tuple[type, ...] = ()
        autowrap: tuple = ()
        try:  # timm marks the layers its own fx feature extractor cannot trace into
            from timm.layers import _fx as timm_fx

            notrace_modules = tuple(timm_fx.get_notrace_modules())
            autowrap = tuple(timm_fx.get_notrace_functions())
        except (ImportError, AttributeError):  # pragma: no cover - timm without the helpers
            pass
        super().__init__(autowrap_functions=autowrap)
        self._notrace = notrace_modules

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (nn.Conv2d, _BatchNorm)) or isinstance(module, self._notrace):
            return True
        return super().is_leaf_module(module, qualified_name)


@functools.cache
def _foldable_convs() -> tuple[type, ...]:
    """Convolution classes whose forward is ``conv2d(x, self.weight, self.bias, ...)``."""
    kinds: list[type] = [nn.Conv2d]
    try:
        from timm.layers import Conv2dSame

        kinds.append(Conv2dSame)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


@functools.cache
def _foldable_batchnorms() -> tuple[type, ...]:
    """BatchNorm classes whose eval forward is exactly the affine map (timm's
    BatchNormAct2d: followed by a dropout and an activation, which stay)."""
    kinds: list[type] = [nn.BatchNorm2d]
    try:
        from timm.layers import BatchNormAct2d

        kinds.append(BatchNormAct2d)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _foldable_bn(module: nn.Module) -> bool:
    """A BatchNorm of a foldable class that has running statistics."""
    return type(module) in _foldable_batchnorms() and module.running_mean is not None


def _conv_bn_pairs(network: nn.Module) -> tuple[list[tuple[str, str]], int]:
    """``(conv, bn)`` qualified names where the BatchNorm's only input is the convolution's
    output and nothing else reads that output; and the number of BatchNorms left over."""
    # The backbone holds every convolution; the head (pooling, whitening) has none.
    root, prefix = (network.backbone, "backbone.") if isinstance(
        getattr(network, "backbone", None), nn.Module) else (network, "")
    graph = _LeafTracer().trace(root)
    modules = {prefix + name: module for name, module in root.named_modules()}
    for node in graph.nodes:
        if node.op == "call_module":
            node.target = prefix + str(node.target)
    pairs, leftover = [], 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        source = node.args[0] if node.args else None
        bn = modules[node.target]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules.get(source.target)) in _foldable_convs()
                and len(source.users) == 1 and len(node.args) == 1 and not node.kwargs
                and _foldable_bn(bn)):
            pairs.append((str(source.target), str(node.target)))
        else:
            leftover += 1
    return pairs, leftover


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval mode) into ``conv``'s weight and bias, in place."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine \
            else 1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        new_bias = (bias - bn.running_mean) * scale + shift
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, module)


def fold_batchnorm(network: nn.Module) -> tuple[int, int, str | None, list]:
    """Fold every BatchNorm that directly follows a convolution into it, in place.

    Returns:
        ``(folded, left, note, undo)``: BatchNorms folded, BatchNorms left, why nothing was
        folded when the network could not be traced (else ``None``), and what
        :func:`_unfold` needs to restore the network.
    """
    try:
        pairs, leftover = _conv_bn_pairs(network)
    except Exception as exc:  # fx cannot trace every architecture: fold nothing then
        count = sum(isinstance(m, _BatchNorm) for m in network.modules())
        return 0, count, f"not traceable by torch.fx ({type(exc).__name__}); BatchNorm " \
                         "left unfolded", []
    undo = []
    for conv_name, bn_name in pairs:
        conv, bn = network.get_submodule(conv_name), network.get_submodule(bn_name)
        undo.append((conv_name, conv.weight, conv.bias, bn_name, bn))
        _fold(conv, bn)
        if type(bn) is nn.BatchNorm2d:
            _replace(network, bn_name, nn.Identity())
        else:  # BatchNormAct2d: keep what follows the normalisation
            _replace(network, bn_name, nn.Sequential(bn.drop, bn.act))
    return len(pairs), leftover, None, undo


def _unfold(network: nn.Module, undo: list) -> None:
    """Put back what :func:`fold_batchnorm` changed."""
    for conv_name, weight, bias, bn_name, bn in reversed(undo):
        conv = network.get_submodule(conv_name)
        conv.weight = weight
        conv.bias = bias
        _replace(network, bn_name, bn)


class PointwiseGemm(nn.Module):
    """A 1x1, stride-1, ungrouped convolution as one matrix product over the pixels of a
    channels-last batch: ``[N*H*W, C] @ [C, O] + b``, no copy in or out (the NHWC tensor
    is already that matrix). PyTorch sends small batch-1 convolutions (< 20,480 input
    values, e.g. 256 x 7 x 7) to its slow native kernel rather than oneDNN; the matrix
    product runs them at the BLAS rate. CPU only (cuDNN needs no help)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        out_channels, in_channels = conv.weight.shape[:2]
        weight = conv.weight.detach().reshape(out_channels, in_channels)
        self.register_buffer("weight_t", weight.t().contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        rows = rows.reshape(n * h * w, c)
        out = rows @ self.weight_t if self.bias is None else \
            torch.addmm(self.bias, rows, self.weight_t)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def pointwise_as_gemm(network: nn.Module) -> int:
    """Replace every plain 1x1 stride-1 ungrouped convolution by :class:`PointwiseGemm`,
    in place; returns how many."""
    count = 0
    for name, module in list(network.named_modules()):
        if (type(module) is nn.Conv2d and module.kernel_size == (1, 1)
                and module.stride == (1, 1) and module.padding == (0, 0)
                and module.dilation == (1, 1) and module.groups == 1):
            _replace(network, name, PointwiseGemm(module))
            count += 1
    return count


class PackedConv2d(nn.Module):
    """A convolution run by oneDNN with its weight reordered, once per input shape, into
    the blocked layout oneDNN picks for that shape (CPU, float32).

    PyTorch's own convolution reorders the weight on every call (and sends small batch-1
    inputs to a slower native kernel); for a query encoder that runs the same shape again
    and again the reordering is the same work each time. The reordered weights of up to
    :attr:`MAX_SHAPES` input shapes are kept (each as large as the weight); other shapes,
    other dtypes and other devices run ``torch.nn.functional.conv2d`` as before. The
    result is the same convolution by the same library (the probe of
    :func:`prepare_for_inference` checks it).
    """

    MAX_SHAPES = 2

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under a dispatch mode (the FLOP counter of model.cost, a profiler) the plain
        # convolution runs, which such a mode knows how to count.
        if (torch._C._len_torch_dispatch_stack() or x.dtype != torch.float32
                or x.device.type != "cpu" or self.weight.device.type != "cpu"):
            return self._plain(x)
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= self.MAX_SHAPES:
                return self._plain(x)
            packed = self._packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(key))
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "none", [], "")

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)

    def forget_shapes(self) -> None:
        """Drop the reordered weights (e.g. after the probe batch)."""
        self._packed.clear()

    def __getstate__(self) -> dict:
        # The reordered weights are opaque oneDNN tensors, which cannot be copied or
        # pickled; they are a cache, so a copy starts without them.
        state = super().__getstate__()
        state["_packed"] = {}
        return state

    def as_conv(self) -> nn.Conv2d:
        """The plain convolution with the same weights."""
        out_channels, in_channels = self.weight.shape[0], self.weight.shape[1] * self.groups
        conv = nn.Conv2d(in_channels, out_channels, tuple(self.weight.shape[2:]),
                         tuple(self.stride), tuple(self.padding), tuple(self.dilation),
                         self.groups, bias=self.bias is not None)
        conv = conv.to(self.weight.device).requires_grad_(False)
        conv.weight.data = self.weight
        if self.bias is not None:
            conv.bias.data = self.bias
        return conv


def packing_available() -> bool:
    """Whether this torch has oneDNN and the two operators :class:`PackedConv2d` calls."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_convolution_weight  # noqa: B018 (a lookup that may raise)
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def pack_convolutions(network: nn.Module) -> list[str]:
    """Replace every plain ``nn.Conv2d`` with zero padding by :class:`PackedConv2d`, in
    place; returns their names (subclasses such as timm's ``Conv2dSame``, which pads in
    its forward pass, are left as they are)."""
    names = []
    for name, module in list(network.named_modules()):
        if (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            _replace(network, name, PackedConv2d(module))
            names.append(name)
    return names


def _unpack(network: nn.Module, names: list[str]) -> None:
    for name in names:
        _replace(network, name, network.get_submodule(name).as_conv())


def _forget_shapes(network: nn.Module) -> None:
    for module in network.modules():
        if isinstance(module, PackedConv2d):
            module.forget_shapes()


def prepare_for_inference(
    network: nn.Module,
    device: str | torch.device = "cpu",
    *,
    fold: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
    copy: bool = True,
    probe: bool = True,
    pointwise: bool | None = None,
    packed: bool | None = None,
) -> nn.Module:
    """The network ready for forward passes only: eval mode, no gradients, BatchNorm folded,
    on ``device`` in the device's best memory layout; optionally compiled.

    Args:
        network: an :class:`~raml_cli.model.network.EmbeddingNetwork` (or a DDP wrapper of
            one: its module is used).
        device: where it runs.
        fold: fold BatchNorm into convolutions.
        channels_last: ``None``: channels-last, the default on every device (see the
            module text).
        compile: wrap the forward pass in ``torch.compile``.
        copy: prepare a copy and leave ``network`` as it is (``False``: modify it in place,
            for a network loaded only to run).
        pointwise: run 1x1 convolutions as matrix products (:class:`PointwiseGemm`);
            ``None``: on the CPU with channels-last where the convolutions are not packed.
        packed: run the convolutions with weights reordered ahead of time for oneDNN
            (:class:`PackedConv2d`; CPU only, ignored elsewhere); ``None``: on the CPU with
            channels-last, not compiled, where this torch has the operators
            (:func:`packing_available`).
        probe: check the folded network against the unfolded one on a small random batch
            and undo the folding if they differ by more than :data:`PROBE_TOLERANCE`.

    Returns:
        The prepared module; ``module.inference`` is its :class:`InferencePlan`. A network
        that is already prepared (has ``inference``) is returned as it is.

    Raises:
        InputError: ``compile`` requested where ``torch.compile`` is not available.
    """
    network = getattr(network, "module", network)  # DDP / DataParallel
    if isinstance(getattr(network, "inference", None), InferencePlan):
        return network
    device = torch.device(device)
    if copy:
        network = copy_module.deepcopy(network)
    network = network.to(device).eval().requires_grad_(False)
    plan = InferencePlan(device=str(device))
    # The probe batch's output of the network as it stands, for the next step's check.
    accepted = None
    if fold:
        accepted = _probe_output(network, device) if probe else None
        plan.folded, plan.unfolded, plan.note, undo = fold_batchnorm(network)
        if plan.folded and accepted is not None:
            folded = _probe_output(network, device)
            plan.probe_difference = float((folded - accepted).abs().max().item())
            if plan.probe_difference <= PROBE_TOLERANCE:
                accepted = folded
            else:
                plan.note = (f"folding changed the probe's embeddings by "
                             f"{plan.probe_difference:.2e} (> {PROBE_TOLERANCE:g}); "
                             "BatchNorm left unfolded")
                _unfold(network, undo)
                plan.unfolded += plan.folded
                plan.folded = 0
    plan.channels_last = True if channels_last is None else bool(channels_last)
    if plan.channels_last:
        network = network.to(memory_format=torch.channels_last)
    on_cpu = device.type == "cpu"
    if packed is None:
        packed = plan.channels_last and on_cpu and not compile and packing_available()
    if packed and on_cpu:  # CUDA has its own kernels (cuDNN); oneDNN is the CPU's
        if probe and accepted is None:
            accepted = _probe_output(network, device)
        plan.packed_convs, note = _pack_checked(network, device, accepted)
        if note:
            plan.note = note if plan.note is None else f"{plan.note}; {note}"
    if pointwise is None:
        pointwise = plan.channels_last and on_cpu and not plan.packed_convs
    if pointwise:
        plan.pointwise_gemm = pointwise_as_gemm(network)
    if compile:
        network = _compiled(network)
        plan.compiled = True
    network.inference = plan
    return network


def _pack_checked(network: nn.Module, device: torch.device, reference: torch.Tensor | None
                  ) -> tuple[int, str | None]:
    """Pack the convolutions (:func:`pack_convolutions`), checked on the probe batch
    against ``reference``, the unpacked network's probe output (``None``: unchecked); on
    a difference beyond :data:`PROBE_TOLERANCE` or an error of the operators, put the
    plain convolutions back. Returns how many are packed and a note if none could be."""
    names = pack_convolutions(network)
    if not names or reference is None:
        return len(names), None
    try:
        difference = float((_probe_output(network, device) - reference).abs().max().item())
    except RuntimeError as exc:  # an operator that this build refuses for some layer
        _unpack(network, names)
        return 0, f"oneDNN packing failed ({str(exc).splitlines()[0][:120]}); not packed"
    _forget_shapes(network)  # the probe's shape is not the one that will run
    if not difference <= PROBE_TOLERANCE:
        _unpack(network, names)
        return 0, (f"packing changed the probe's embeddings by {difference:.2e} "
                   f"(> {PROBE_TOLERANCE:g}); not packed")
    return len(names), None


def _probe_output(network: nn.Module, device: torch.device) -> torch.Tensor:
    """The network's float32 output for a fixed random ``2 x 3 x 64 x 64`` batch."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, PROBE_SIDE, PROBE_SIDE, generator=generator).to(device)
    with torch.inference_mode(), exact_float32():
        return network(x).float()


def _compiled(network: nn.Module) -> nn.Module:
    """``network`` with its forward pass compiled (``torch.compile``), or a clear error."""
    if not hasattr(torch, "compile"):
        raise InputError("--compile needs torch.compile (torch 2.0 or newer); this torch "
                         f"{torch.__version__} lacks it. Run without --compile.")
    try:
        compiled = torch.compile(network.forward, dynamic=False)
    except Exception as exc:  # torch.compile refuses some platforms up front
        raise InputError(f"torch.compile is not available here ({exc}). Run without "
                         "--compile.") from exc

    def forward(*args: object, **kwargs: object) -> torch.Tensor:
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # compilation happens on the first call of each shape
            origin = type(exc).__module__ or ""
            if origin.startswith(("torch._dynamo", "torch._inductor")):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise InputError(f"torch.compile could not compile the network on this "
                                 f"machine ({type(exc).__name__}: {first[:300]}). Run "
                                 "without --compile.") from exc
            raise

    network.forward = forward
    return network
