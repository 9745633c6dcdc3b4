"""The shared loop with a tiny synthetic task: resume, checkpoints, NaN, log, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from raml_cli.errors import InputError, TrainingError
from raml_cli.train.checkpoint import checkpoint_path, load_checkpoint
from raml_cli.train.loop import LoopConfig, run_training
from raml_cli.train.runlog import log_path, read_log
from raml_cli.train.task import LoopContext, LossOutput, TrainingTask


class KilledError(Exception):
    """Stands in for a killed process in the resume test."""


class LinearTask(TrainingTask):
    """Regress random inputs onto a fixed target map; batches depend on (seed, epoch, index).

    ``state`` holds a per-epoch random offset drawn in ``begin_epoch`` (like mined negatives),
    so resuming mid-epoch only works if the task state is restored from the checkpoint.
    """

    role = "teacher"

    def __init__(self, batches: int = 6, kill_at: tuple[int, int] | None = None,
                 nan_at: int | None = None) -> None:
        self.n = batches
        self.kill_at = kill_at
        self.nan_at = nan_at
        self.offset = torch.zeros(4)
        self.calls = 0
        self.saved: dict[str, torch.Tensor] | None = None

    def describe(self) -> dict[str, Any]:
        return {"batches": self.n}

    def build(self, ctx: LoopContext) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def batches_per_epoch(self, ctx: LoopContext) -> int:
        return self.n

    def begin_epoch(self, epoch: int, module: nn.Module, ctx: LoopContext) -> None:
        # Uses the global RNG on purpose: it must be restored on resume as well.
        self.offset = torch.randn(4)

    def batches(self, epoch: int, start: int, ctx: LoopContext) -> Iterator[Any]:
        for i in range(start, self.n):
            if self.kill_at == (epoch, i):
                raise KilledError
            g = torch.Generator().manual_seed(ctx.seed * 1000 + epoch * 100 + i)
            x = torch.randn(5, 4, generator=g) + self.offset
            yield x, x[:, :2] * 2.0 - x[:, 2:]

    def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
        x, y = batch
        self.calls += 1
        loss = ((model(x) - y) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return LossOutput(loss, x.shape[0], {"abs": loss.detach()})

    def validate(self, module: nn.Module, ctx: LoopContext) -> dict[str, float]:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(50, 4, generator=g)
        err = ((module(x) - (x[:, :2] * 2.0 - x[:, 2:])) ** 2).mean().item()
        return {"recall@1": 1.0 / (1.0 + err), "map": 1.0 / (1.0 + err)}

    def state_dict(self) -> dict[str, Any]:
        return {"offset": self.offset.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offset = state["offset"].clone()

    def save(self, module: nn.Module, path: Path, ctx: LoopContext, result: Any) -> None:
        self.saved = {k: v.clone() for k, v in module.state_dict().items()}
        path.write_text("model")


def _config(out: Path, **kw: Any) -> LoopConfig:
    base = dict(output=out, epochs=3, lr=1e-2, seed=3, device="cpu", workers=0, val_every=1,
                accumulate=2, log_every=1)
    base.update(kw)
    return LoopConfig(**base)


def test_loop_trains_validates_and_logs(tmp_path: Path) -> None:
    task = LinearTask()
    result = run_training(task, _config(tmp_path / "m.safetensors"))
    assert result.epochs == 3 and result.steps == 9
    assert [v["epoch"] for v in result.validations] == [1, 2, 3]
    first, last = result.validations[0]["metrics"], result.validations[-1]["metrics"]
    assert last["recall@1"] > first["recall@1"]
    assert result.best is not None
    assert (tmp_path / "m.safetensors").read_text() == "model"
    assert not checkpoint_path(tmp_path / "m.safetensors").exists()  # removed when done
    events = [r["event"] for r in read_log(log_path(tmp_path / "m.safetensors"))]
    assert events[0] == "start" and events[-1] == "end"
    assert events.count("epoch") == 3 and events.count("val") == 3 and events.count("step") == 9


@pytest.mark.parametrize("kill_at", [(1, 3), (2, 0)])
def test_resume_is_bit_exact(tmp_path: Path, kill_at: tuple[int, int]) -> None:
    reference = LinearTask()
    run_training(reference, _config(tmp_path / "a.safetensors"))

    out = tmp_path / "b.safetensors"
    with pytest.raises(KilledError):
        run_training(LinearTask(kill_at=kill_at), _config(out, checkpoint_every=1))
    state = load_checkpoint(checkpoint_path(out))
    assert (state["epoch"], state["micro_batch"]) == (kill_at[0], kill_at[1] // 2 * 2)
    with pytest.raises(InputError, match="--resume"):
        run_training(LinearTask(), _config(out, checkpoint_every=1))
    resumed = LinearTask()
    result = run_training(resumed, _config(out, checkpoint_every=1, resume=True))
    assert result.resumed_from == (state["epoch"], state["micro_batch"])
    assert reference.saved is not None and resumed.saved is not None
    for key, value in reference.saved.items():
        assert torch.equal(value, resumed.saved[key]), key
    assert result.validations[-1] == run_training(
        LinearTask(), _config(tmp_path / "c.safetensors")).validations[-1]


def test_resume_refuses_other_options(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    with pytest.raises(KilledError):
        run_training(LinearTask(kill_at=(1, 0)), _config(out))
    with pytest.raises(TrainingError, match="lr: 0.01 -> 0.02"):
        run_training(LinearTask(), _config(out, lr=2e-2, resume=True))


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingError, match="became nan.*kept"):
        run_training(LinearTask(nan_at=8), _config(out))
    state = load_checkpoint(checkpoint_path(out))
    assert state["epoch"] == 1  # the end-of-epoch-1 checkpoint survives
    for value in state["model"].values():
        assert torch.isfinite(value).all()
    assert not out.exists()


def test_too_much_accumulation_and_bad_output(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--accumulate"):
        run_training(LinearTask(batches=3), _config(tmp_path / "m.st", accumulate=4))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError):
        run_training(LinearTask(), _config(blocker / "m.safetensors"))


def test_denormals_flushed_during_training_only(tmp_path: Path) -> None:
    from raml_cli.train.loop import _flushing_denormals

    class Probe(LinearTask):
        seen: list[bool] = []

        def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
            self.seen.append(_flushing_denormals())
            return super().compute_loss(model, batch, ctx)

    assert not _flushing_denormals()
    run_training(Probe(), _config(tmp_path / "a.st", epochs=1, val_every=0))
    assert Probe.seen and all(Probe.seen) and not _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        run_training(Probe(), _config(tmp_path / "b.st", epochs=1, val_every=0))
        assert _flushing_denormals()  # a caller's own setting is restored, not reset
    finally:
        torch.set_flush_denormal(False)
