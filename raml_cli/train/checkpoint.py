"""Training checkpoints: everything needed to continue a killed run exactly.

A checkpoint is an internal file (never a model file: those are safetensors, see
:mod:`raml_cli.model.files`). It is written with :func:`torch.save` to a temporary
name and renamed into place, and read back with ``torch.load(weights_only=True)``,
which refuses to run code: so every value in it is a tensor, a number, a string,
``None`` or a list/tuple/dict of those. RNG states, whose native forms hold NumPy
arrays, are converted by :func:`pack_rng_state` / :func:`unpack_rng_state`.

Layout (a dict): ``format`` (``raml-checkpoint``), ``format_version``, ``signature``
(JSON of the options that define the run), ``epoch`` (the epoch in progress,
0-based), ``micro_batch`` (the next micro-batch of that epoch to run),
``global_step`` (optimiser steps done), ``model``, ``optimizer``, ``scheduler``,
``task`` (the task's state), ``rng``, ``history`` (JSON of the validations so far).

The *signature* (:func:`run_signature`) is what a resumed run must share with the run
that wrote the checkpoint: the task's role and options, the loop's options that change
what is computed, and the number of processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raml_cli.atomic import atomic_output
from raml_cli.errors import TrainingError

CHECKPOINT_FORMAT = "raml-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path(output: str | os.PathLike) -> Path:
    """The checkpoint beside a model output: ``teacher.safetensors`` -> ``teacher.ckpt``."""
    return Path(output).with_suffix(".ckpt")


#: Loop options that change what is computed (the others may differ when resuming).
SIGNATURE_LOOP_OPTIONS = ("epochs", "lr", "weight_decay", "optimizer", "momentum", "scheduler",
                          "accumulate", "seed", "pct_start", "div_factor", "final_div_factor")
#: Options added after checkpoints were first written, with the value every older run had:
#: a checkpoint written before them resumes as that run.
SIGNATURE_ADDED = {"optimizer": "adamw", "momentum": 0.9, "scheduler": "onecycle"}


def upgrade_signature(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` (a checkpoint's signature) with :data:`SIGNATURE_ADDED` filled in where an
    older version left them out."""
    upgraded = json.loads(json.dumps(stored))
    loop, task = upgraded.get("loop"), upgraded.get("task")
    if isinstance(loop, dict) and "optimizer" not in loop:
        loop.update(SIGNATURE_ADDED)
        if isinstance(task, dict) and "weight_decay" in task:  # a training's own options
            task.update(SIGNATURE_ADDED)
    return upgraded


def run_signature(role: str, task_options: dict[str, Any], loop_options: dict[str, Any],
                  world_size: int) -> dict[str, Any]:
    """The JSON-able signature of a run (see the module docstring).

    Args:
        role: the task's role (``teacher`` or ``student``).
        task_options: the task's :meth:`~raml_cli.train.task.TrainingTask.describe`.
        loop_options: the loop's options (:meth:`~raml_cli.train.loop.LoopConfig.to_dict`);
            only :data:`SIGNATURE_LOOP_OPTIONS` are kept.
        world_size: processes of the run.
    """
    from raml_cli.train.runlog import json_default

    signature = {"role": role, "task": task_options,
                 "loop": {key: loop_options[key] for key in SIGNATURE_LOOP_OPTIONS},
                 "world_size": world_size}
    return json.loads(json.dumps(signature, default=json_default))


def signature_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """``key: old -> new`` for every leaf that differs (for the resume error)."""
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = signature_differences(a, b, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(parts)


def pack_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """Turn :func:`raml_cli.seeding.rng_state` into tensors and plain values.

    Python's state ``(version, tuple_of_625_ints, gauss)`` and NumPy's legacy state
    ``('MT19937', uint32[624], pos, has_gauss, cached_gaussian)`` become int64 tensors
    plus numbers, so the checkpoint loads with ``weights_only=True``.
    """
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    packed: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(list(internal), dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_name": str(name),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": state["torch"].clone(),
    }
    if "cuda" in state:
        packed["cuda"] = [s.clone() for s in state["cuda"]]
    return packed


def unpack_rng_state(packed: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack_rng_state` (input for :func:`raml_cli.seeding.set_rng_state`)."""
    state: dict[str, Any] = {
        "python": (
            packed["python_version"],
            tuple(int(v) for v in packed["python_state"].tolist()),
            packed["python_gauss"],
        ),
        "numpy": (
            packed["numpy_name"],
            packed["numpy_keys"].numpy().astype(np.uint32),
            packed["numpy_pos"],
            packed["numpy_has_gauss"],
            packed["numpy_cached_gaussian"],
        ),
        "torch": packed["torch"],
    }
    if "cuda" in packed:
        state["cuda"] = packed["cuda"]
    return state


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        TrainingError: the file is unreadable, not a raml checkpoint, or of a newer version.
    """
    target = Path(path)
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        raise TrainingError(
            f"The checkpoint {target} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). It is not a raml "
            "checkpoint or it is damaged: delete it and run the command again without --resume "
            "to start over."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{target} is not a raml training checkpoint. Delete it (or choose another -o) "
            "and run the command again without --resume."
        )
    if int(state.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise TrainingError(
            f"The checkpoint {target} was written by a newer raml (format version "
            f"{state['format_version']}). Upgrade raml to resume it, or delete it to start over."
        )
    return state
