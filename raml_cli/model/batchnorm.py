"""BatchNorm statistics for a network whose BatchNorm layers stay frozen.

raml keeps every BatchNorm layer in eval mode while training (METHOD.md). A network with
random weights comes with statistics (mean 0, variance 1) that describe no real
activations; frozen as they are, the embeddings collapse to one point. They are
therefore measured once on training images (:func:`calibrate_batchnorm`), then frozen.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from raml_cli.devices import autocast, to_device


def calibrate_batchnorm(network: nn.Module, batches: Iterable[torch.Tensor],
                        device: torch.device, *, channels_last: bool = False,
                        mixed_precision: bool = True) -> int:
    """Set every BatchNorm layer's running statistics to their average over ``batches``.

    For a randomly initialised network, whose BatchNorm layers are then kept frozen
    (METHOD.md): the statistics are measured once, with every other layer in eval mode,
    as the cumulative average over the batches (``momentum=None``), and the layers'
    momentum is restored afterwards. ``batches`` yields normalised images
    ``[B, 3, H, W]`` (moved to ``device``; bf16 autocast on CUDA with ``mixed_precision``).
    Returns the number of BatchNorm layers calibrated.
    """
    layers = [m for m in network.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return 0
    was_training = network.training
    momenta = [m.momentum for m in layers]
    network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad(), autocast(device, mixed_precision):
            for images in batches:
                network(to_device(images, device, channels_last=channels_last))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        network.train(was_training)
    return len(layers)
