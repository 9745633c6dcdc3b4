"""Seeds and random-number-generator state, for reproducible and resumable runs."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from raml_cli.errors import InputError

#: Seeds are 0 .. 2^63 - 1 (PyTorch's generators take 64 bits; beyond, they overflow).
MAX_SEED = 2**63 - 1


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed`` if it is an integer in 0..:data:`MAX_SEED`, else an :class:`InputError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{option} must be an integer from 0 to {MAX_SEED} (2^63 - 1), got "
                         f"{seed}.")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) from one integer."""
    import torch  # here, so that check_seed costs no torch import (raml download)

    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    """Capture every global RNG state, to be stored in a checkpoint."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
