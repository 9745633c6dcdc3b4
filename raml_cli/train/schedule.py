"""The optimisers and learning-rate schedules of the training loop (``--optimizer``,
``--scheduler``), with the reference's settings.

Optimisers (``params`` are the task's parameter groups, each with its own ``lr``: GeM's
``p`` at 10x, or 100x for one ``p`` per channel):

- ``adamw``: AdamW, decoupled weight decay (the default);
- ``adam``: Adam, weight decay as an L2 term added to the gradient;
- ``sgd``: SGD with ``--momentum`` (default 0.9) and L2 weight decay.

Schedules, for a group of peak learning rate ``lr`` and ``T`` optimiser steps in all:

- ``onecycle``: one cycle (Smith), cosine warm-up from ``lr / 10`` to ``lr`` over the first
  30% of the steps, then cosine annealing to ``lr / 10 / 1e4``; stepped per optimiser step.
- ``cyclic``: triangular cycles between ``lr / 10`` and ``lr``, ``floor(T / 6)`` steps up
  and as many down (three cycles in a run), each cycle's amplitude half the one before
  (``triangular2``); stepped per optimiser step.
- ``exponential``: ``lr * exp(-0.001 * e)`` during epoch ``e`` (0-based): stepped once at
  the end of every epoch, as the reference does.
- ``none``: ``lr`` throughout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from raml_cli.errors import InputError

OPTIMIZER_CHOICES = ("adamw", "adam", "sgd")
SCHEDULER_CHOICES = ("onecycle", "cyclic", "exponential", "none")
#: Schedules stepped once per epoch (the others once per optimiser step).
PER_EPOCH_SCHEDULERS = ("exponential",)
#: ``exponential``: the factor per epoch.
EXPONENTIAL_GAMMA = math.exp(-0.001)
#: ``cyclic``: the lowest learning rate is ``lr / CYCLIC_DIV``; a run holds three cycles.
CYCLIC_DIV = 10.0
CYCLIC_HALF_CYCLES = 6


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    """``value`` normalised (lower case), or an :class:`InputError` naming the choices."""
    key = str(value).strip().lower()
    if key not in choices:
        raise InputError(f"Unknown {option} {value!r}. Choose one of: {', '.join(choices)}.")
    return key


def build_optimizer(groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``groups`` (see the module docstring)."""
    name = check_choice(name, OPTIMIZER_CHOICES, "--optimizer")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, *,
                    pct_start: float = 0.3, div_factor: float = 10.0,
                    final_div_factor: float = 1e4) -> Any:
    """The schedule ``name`` of ``optimizer`` for a run of ``total_steps`` optimiser steps.

    Each group's current ``lr`` is its peak. Step it after every optimiser step, or after
    every epoch for the schedules in :data:`PER_EPOCH_SCHEDULERS`.
    """
    name = check_choice(name, SCHEDULER_CHOICES, "--scheduler")
    peaks = [group["lr"] for group in optimizer.param_groups]
    schedulers = torch.optim.lr_scheduler
    if name == "onecycle":
        return schedulers.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps,
                                     pct_start=pct_start, div_factor=div_factor,
                                     final_div_factor=final_div_factor)
    if name == "cyclic":
        return schedulers.CyclicLR(
            optimizer, base_lr=[peak / CYCLIC_DIV for peak in peaks], max_lr=peaks,
            step_size_up=max(1, total_steps // CYCLIC_HALF_CYCLES), mode="triangular2",
            cycle_momentum=False)
    if name == "exponential":
        return schedulers.ExponentialLR(optimizer, gamma=EXPONENTIAL_GAMMA)
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)


__all__ = ["OPTIMIZER_CHOICES", "SCHEDULER_CHOICES", "PER_EPOCH_SCHEDULERS",
           "build_optimizer", "build_scheduler", "check_choice"]
