"""Whether a network can embed images of a given resolution, checked before any work."""

from __future__ import annotations

import torch
from torch import nn

from raml_cli.errors import InputError

_PROBE_RESOLUTIONS = (32, 64, 96, 128, 160, 224, 299, 384, 448)

def check_resolution(network: nn.Module, res: int, arch: str) -> None:
    """Raise :class:`InputError` when ``network`` cannot embed a ``res x res`` image.

    Runs one forward pass of a blank image on the CPU (before any training work). On a
    failure, larger resolutions are probed so the message can name one that works.
    """

    def works(size: int) -> str | None:
        try:
            with torch.no_grad():
                out = network(torch.zeros(1, 3, size, size))
            return None if torch.isfinite(out).all() else "non-finite output"
        except (RuntimeError, ValueError, AssertionError) as err:
            return str(err).splitlines()[0] if str(err) else type(err).__name__

    was_training = network.training
    network.eval()
    try:
        problem = works(res)
        if problem is None:
            return
        larger = next((r for r in _PROBE_RESOLUTIONS if r > res and works(r) is None), None)
    finally:
        network.train(was_training)
    if larger is not None:
        raise InputError(
            f"--res {res} is below what {arch} accepts: a {res}x{res} image fails in the "
            f"network ({problem}). Use --res {larger} or more."
        )
    raise InputError(
        f"{arch} fails on a blank {res}x{res} image ({problem}), and at larger resolutions "
        "too: this architecture does not fit raml's embedding network. Choose another --arch "
        "(e.g. resnet50)."
    )
