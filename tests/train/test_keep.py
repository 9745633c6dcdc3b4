"""--keep best|last, --patience and the validation hook of the shared loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from raml_cli.errors import InputError
from raml_cli.train.loop import LoopConfig, run_training
from raml_cli.train.runlog import log_path, read_log
from raml_cli.train.task import LoopContext, LossOutput, TrainingTask


class KilledError(Exception):
    """Stands in for a killed process."""


class ScriptedTask(TrainingTask):
    """Trains a linear map; validation returns the scripted score of each epoch and keeps a
    copy of the weights it scored, so a test knows which epoch's model a file holds."""

    role = "teacher"

    def __init__(self, scores: list[float], kill_in_epoch: int | None = None) -> None:
        self.scores = scores
        self.kill_in_epoch = kill_in_epoch
        self.validated = 0
        self.scored: dict[int, dict[str, torch.Tensor]] = {}
        self.saved: dict[str, torch.Tensor] | None = None
        self.result: Any = None

    def describe(self) -> dict[str, Any]:
        return {"scores": self.scores}

    def build(self, ctx: LoopContext) -> nn.Module:
        return nn.Linear(4, 2)

    def batches_per_epoch(self, ctx: LoopContext) -> int:
        return 2

    def batches(self, epoch: int, start: int, ctx: LoopContext) -> Iterator[Any]:
        for i in range(start, 2):
            if epoch == self.kill_in_epoch:
                raise KilledError
            g = torch.Generator().manual_seed(epoch * 10 + i)
            yield torch.randn(5, 4, generator=g)

    def compute_loss(self, model: nn.Module, batch: Any, ctx: LoopContext) -> LossOutput:
        return LossOutput(((model(batch) - batch[:, :2]) ** 2).mean(), batch.shape[0])

    def validate(self, module: nn.Module, ctx: LoopContext) -> dict[str, float]:
        epoch = len(self.scored) + 1 if not self.scored else max(self.scored) + 1
        self.scored[epoch] = {k: v.clone() for k, v in module.state_dict().items()}
        return {"recall@1": self.scores[epoch - 1], "map": 0.5}

    def save(self, module: nn.Module, path: Path, ctx: LoopContext, result: Any) -> None:
        self.saved = {k: v.clone() for k, v in module.state_dict().items()}
        self.result = result
        path.write_text("model")


def _config(out: Path, **kw: Any) -> LoopConfig:
    base = dict(output=out, epochs=3, lr=1e-2, seed=0, device="cpu", workers=0, val_every=1)
    base.update(kw)
    return LoopConfig(**base)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_is_the_default_with_validation(tmp_path: Path) -> None:
    task = ScriptedTask([0.2, 0.8, 0.5])
    result = run_training(task, _config(tmp_path / "m.safetensors"))
    assert result.kept is not None
    assert result.kept["keep"] == "best" and result.kept["epoch"] == 2
    assert result.kept["metrics"]["recall@1"] == 0.8 and result.kept["metric"] == "recall@1"
    assert _same(task.saved, task.scored[2]) and not _same(task.saved, task.scored[3])


def test_keep_last_writes_the_last_epoch(tmp_path: Path) -> None:
    task = ScriptedTask([0.2, 0.8, 0.5])
    result = run_training(task, _config(tmp_path / "m.safetensors", keep="last"))
    assert result.kept["keep"] == "last" and result.kept["epoch"] == 3
    assert _same(task.saved, task.scored[3])


def test_monitor_chooses_the_metric(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'map@r' is not measured"):
        run_training(ScriptedTask([0.2, 0.8, 0.5]), _config(tmp_path / "m.st", monitor="map@r"))


def test_patience_stops_and_logs(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    task = ScriptedTask([0.5, 0.6, 0.4, 0.3, 0.9])
    result = run_training(task, _config(out, epochs=5, patience=2))
    assert result.stopped_early and result.epochs == 4 and result.kept["epoch"] == 2
    stops = [r for r in read_log(log_path(out)) if r["event"] == "early_stop"]
    assert len(stops) == 1 and stops[0]["epoch"] == 4 and stops[0]["best_epoch"] == 2


def test_keep_best_survives_resume(tmp_path: Path) -> None:
    reference = ScriptedTask([0.9, 0.1, 0.2])
    run_training(reference, _config(tmp_path / "a.safetensors"))
    out = tmp_path / "b.safetensors"
    with pytest.raises(KilledError):
        run_training(ScriptedTask([0.9, 0.1, 0.2], kill_in_epoch=2), _config(out))
    resumed = ScriptedTask([0.9, 0.1, 0.2])
    resumed.scored = {1: {}, 2: {}}  # what the killed run validated
    result = run_training(resumed, _config(out, resume=True))
    assert result.resumed_from == (2, 0) and result.kept["epoch"] == 1
    assert _same(resumed.saved, reference.scored[1])


def test_validation_hook_sees_every_validation_and_can_stop_the_run(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        seen.append((epoch, metrics["recall@1"]))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(ScriptedTask([0.2, 0.8, 0.5]),
                     _config(tmp_path / "m.safetensors", on_validation=hook))
    assert seen == [(1, 0.2), (2, 0.8)]


@pytest.mark.parametrize("kw, message", [({"keep": "best", "val_every": 0}, "--keep best"),
                                         ({"patience": 2, "val_every": 0}, "--patience"),
                                         ({"keep": "first"}, "--keep")])
def test_keep_and_patience_need_validation(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_training(ScriptedTask([0.1]), _config(tmp_path / "m.safetensors", **kw))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raml_cli.data.toy import generate_toy

    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=16, images_per_class=6, min_side=40, max_side=56)
    return dest


@pytest.mark.slow
def test_teacher_keep_best_writes_the_logged_best_epoch_and_tensorboard(
        toy: Path, tmp_path: Path) -> None:
    """A real (tiny) teacher: the file holds the epoch the log shows as best; the TensorBoard
    events hold the log's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raml_cli.model.files import load_model
    from raml_cli.train.teacher import TeacherConfig, TeacherTask, train_teacher_result

    out, board = tmp_path / "t.safetensors", tmp_path / "board"
    config = TeacherConfig(dataset=str(toy), output=out, arch="test_resnet", dim=16,
                           init="none", res=32, epochs=3, lr=5e-3, batch_size=8, negatives=2,
                           images_per_epoch=16, pool_size=200, workers=0, device="cpu",
                           val_every=1, tensorboard=board)
    result = train_teacher_result(config)
    vals = [r for r in read_log(log_path(out)) if r["event"] == "val"]
    best = max(vals, key=lambda r: (r["metrics"]["recall@1"], -r["epoch"]))
    network, info = load_model(out)
    assert info.config["kept"]["keep"] == "best"
    assert info.config["kept"]["epoch"] == best["epoch"] == result.kept["epoch"]
    task = TeacherTask(config)
    task.build(LoopContext(device=torch.device("cpu")))
    again = task.validate(network, LoopContext(device=torch.device("cpu")))
    assert again["recall@1"] == pytest.approx(best["metrics"]["recall@1"])

    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch/loss", "epoch/images_per_s", "val/recall@1", "val/map", "val/map@r",
            "val/mean_cosine"} <= tags
    assert [e.step for e in events.Scalars("val/recall@1")] == [1, 2, 3]
    assert [round(e.value, 5) for e in events.Scalars("val/recall@1")] == \
        [round(r["metrics"]["recall@1"], 5) for r in vals]


def test_tensorboard_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(InputError, match=r"raml\[tensorboard\]"):
        run_training(ScriptedTask([0.1]), _config(tmp_path / "m.st", tensorboard=tmp_path))
