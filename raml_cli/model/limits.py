"""The sizes raml accepts for resolutions and embeddings (options and model metadata alike).

Torch-free, so that option classes (:mod:`raml_cli.train.options`) and the command line
can check them without importing the network code.
"""

from __future__ import annotations

from raml_cli.errors import InputError

#: The largest resolution raml accepts (option or model metadata): 8x the paper's largest
#: (448 px) and beyond what a batch of images fits in memory at on common hardware.
MAX_RESOLUTION = 4096
#: The largest embedding size (whitening output, metadata ``embedding_dim``) raml accepts.
MAX_EMBEDDING_DIM = 65536


def check_resolution_range(res: int, option: str = "--res") -> int:
    """``res`` if it lies in 8..:data:`MAX_RESOLUTION` pixels, else an :class:`InputError`."""
    if not 8 <= int(res) <= MAX_RESOLUTION:
        raise InputError(f"{option} must be between 8 and {MAX_RESOLUTION} pixels, got {res}.")
    return int(res)
