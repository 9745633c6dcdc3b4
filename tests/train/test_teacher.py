"""Teacher training end to end on a tiny generated toy dataset (real JPEGs, real model files)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from raml_cli.errors import InputError
from raml_cli.model.batchnorm import calibrate_batchnorm
from raml_cli.model.resolution import check_resolution
from raml_cli.train.options import TEACHER_PAPER_PRESETS as PAPER_PRESETS
from raml_cli.train.task import LoopContext
from raml_cli.train.teacher import (
    TeacherConfig,
    TeacherTask,
    train_teacher,
    train_teacher_result,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 classes x 8 images of 48-64 px in the CUB layout (train: 12 classes; val: 6)."""
    from raml_cli.data.toy import generate_toy

    dest = tmp_path_factory.mktemp("data") / "toy"
    generate_toy(dest, seed=0, num_classes=24, images_per_class=8, min_side=48, max_side=64)
    return dest


def _config(toy: Path, out: Path, **kw: Any) -> TeacherConfig:
    base: dict[str, Any] = dict(
        dataset=str(toy), output=out, arch="resnet10t", dim=32, init="none", res=32,
        epochs=2, lr=1e-3, batch_size=8, negatives=2, images_per_epoch=32, pool_size=1000,
        workers=0, device="cpu", seed=0)
    base.update(kw)
    return TeacherConfig(**base)


def _val_recall_at_1(task: TeacherTask, network: nn.Module) -> float:
    return task.validate(network, LoopContext(device=torch.device("cpu")))["recall@1"]


@pytest.mark.slow
def test_training_raises_val_recall_and_writes_a_teacher(toy: Path, tmp_path: Path) -> None:
    from raml_cli.model.files import load_model
    from raml_cli.seeding import seed_everything

    config = _config(toy, tmp_path / "t.safetensors", epochs=3, lr=2e-3, images_per_epoch=0,
                     val_every=3)
    # The untrained network, built exactly as training builds it (same seed, same init).
    seed_everything(config.seed)
    task = TeacherTask(config)
    before = _val_recall_at_1(task, task.build(LoopContext(device=torch.device("cpu"))))

    result = train_teacher_result(config)
    after = result.validations[-1]["metrics"]["recall@1"]
    assert after > before, (before, after)

    network, info = load_model(config.output)
    assert info.role == "teacher" and info.resolution == 32
    assert info.dataset == str(toy)
    for key in ("arch", "pool", "dim", "init", "res", "epochs", "lr", "weight_decay",
                "samples_per_class", "negatives", "margin", "batch_size", "accumulate",
                "images_per_epoch", "pool_size", "workers", "seed", "device", "val_every"):
        assert key in info.config, key
    assert info.config["train_split"] == "fit" and info.config["margin"] == 0.7
    # The model file holds the last model: its validation is the last one logged.
    assert _val_recall_at_1(task, network) == pytest.approx(after)
    events = [json.loads(line) for line in result.log.read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] in ("start", "val", "end")] == \
        ["start", "val", "end"]


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_model(toy: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train_teacher(_config(toy, tmp_path / "a.safetensors"))

    out = tmp_path / "b.safetensors"
    original = TeacherTask.compute_loss
    calls = {"n": 0}

    def dying(self: TeacherTask, model: nn.Module, batch: Any, ctx: LoopContext) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, micro-batch 3 (4 per epoch)
            raise _Killed
        return original(self, model, batch, ctx)

    monkeypatch.setattr(TeacherTask, "compute_loss", dying)
    with pytest.raises(_Killed):
        train_teacher(_config(toy, out, checkpoint_every=1))
    monkeypatch.setattr(TeacherTask, "compute_loss", original)
    assert out.with_suffix(".ckpt").exists() and not out.exists()
    # Resumed with DataLoader workers: the images and their augmentations are the same.
    result = train_teacher_result(_config(toy, out, checkpoint_every=1, resume=True, workers=2))
    assert result.resumed_from == (1, 2)
    assert not multiprocessing.active_children()  # the persistent workers were released
    a, b = load_file(str(reference)), load_file(str(out))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_config_presets_and_checks() -> None:
    cfg = TeacherConfig.from_options("cub200", preset="paper", epochs=3, lr=None)
    assert cfg.epochs == 3 and cfg.lr == PAPER_PRESETS["cub200"]["lr"]
    assert (cfg.arch, cfg.res, cfg.pool, cfg.dim, cfg.seed) == ("resnet50", 448, "gem", 512, 1234)
    assert TeacherConfig.from_options("toy").arch == "resnet50"
    with pytest.raises(InputError, match="not for 'toy'"):
        TeacherConfig.from_options("toy", preset="paper")
    with pytest.raises(InputError, match="Choose: paper"):
        TeacherConfig.from_options("cub200", preset="fast")
    with pytest.raises(InputError, match="--res must be between 8"):
        TeacherConfig("toy", res=4).check()
    assert TeacherConfig("toy").to_dict()["whitening_init"] == "pca"  # recorded in the model
    with pytest.raises(InputError, match="--whitening-init 'zca'.*pca, random"):
        TeacherConfig("toy", whitening_init="zca").check()
    assert TeacherConfig("toy").positives == "all"
    with pytest.raises(InputError, match="--positives 'easy'.*all, hardest"):
        TeacherConfig("toy", positives="easy").check()


class _NeedsLargeInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_check_resolution_names_a_working_size() -> None:
    check_resolution(_NeedsLargeInput(), 48, "tiny")
    with pytest.raises(InputError, match="--res 32 is below what tiny accepts.*--res 64"):
        check_resolution(_NeedsLargeInput(), 32, "tiny")


def test_calibrate_batchnorm_measures_then_freezes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    images = [torch.randn(6, 3, 8, 8) * 3 + 1, torch.randn(6, 3, 8, 8) * 3 + 1]
    assert calibrate_batchnorm(net, images, torch.device("cpu")) == 1
    bn = net[1]
    with torch.no_grad():
        acts = [net[0](x) for x in images]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert bn.momentum == 0.1 and not bn.training and not net.training


def test_sampler_state_round_trips(toy: Path, tmp_path: Path) -> None:
    task = TeacherTask(_config(toy, tmp_path / "x.safetensors", images_per_epoch=16,
                               pool_size=24))
    ctx = LoopContext(device=torch.device("cpu"))
    network = task.build(ctx)
    task.begin_epoch(0, network, ctx)
    negatives = task.plan_negatives.numpy()
    labels = task.labels
    anchors = task.plan.numpy().reshape(-1)
    assert negatives.shape == (len(anchors), 2)
    assert not np.any(labels[negatives] == labels[anchors][:, None])  # never the anchor's class
    other = TeacherTask(task.config)
    other.build(ctx)
    other.load_state_dict(task.state_dict())
    first = next(iter(task.batches(0, 1, ctx)))
    again = next(iter(other.batches(0, 1, ctx)))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


class _Recorder:
    """A reporter that keeps its warnings (the rest of Reporter's interface, silenced)."""

    def __init__(self) -> None:
        from raml_cli.progress import NULL_REPORTER

        self.warnings: list[str] = []
        self._null = NULL_REPORTER

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._null, name)


def test_validation_reports_the_spread_and_warns_when_collapsed(toy: Path,
                                                                tmp_path: Path) -> None:
    from raml_cli.evaluate.space import space_spread

    reporter = _Recorder()
    ctx = LoopContext(device=torch.device("cpu"), reporter=reporter)  # type: ignore[arg-type]
    task = TeacherTask(_config(toy, tmp_path / "t.safetensors", val_every=1))
    network = task.build(ctx).eval()
    metrics = task.validate(network, ctx)
    vectors = task._embed(network, task.val_samples, ctx, "again").numpy()
    spread = space_spread(vectors)
    assert metrics["mean_cosine"] == pytest.approx(spread.mean_cosine)
    assert metrics["nn_cosine"] == pytest.approx(spread.nn_cosine)
    assert {"recall@1", "map"} <= set(metrics) and not spread.collapsed
    assert reporter.warnings == []
    with torch.no_grad():  # every image onto one axis: a collapsed space
        network.whitening.bias.zero_()
        network.whitening.bias[0] = 50.0
    collapsed = task.validate(network, ctx)
    assert collapsed["mean_cosine"] > 0.9
    assert len(reporter.warnings) == 1 and "collapsed" in reporter.warnings[0]
    assert "asymmetric search will be fragile" in reporter.warnings[0]

def test_loss_at_the_margin_for_two_epochs_warns_of_collapse(toy: Path, tmp_path: Path) -> None:
    from raml_cli.train.teacher import loss_at_margin

    assert loss_at_margin([0.75, 0.69, 0.67], 0.7)  # the losses of a collapsed run
    assert not loss_at_margin([0.69, 0.5], 0.7) and not loss_at_margin([0.7], 0.7)
    assert not loss_at_margin([0.0, 0.0], 0.0)
    task = TeacherTask(_config(toy, tmp_path / "x.safetensors", margin=0.7))
    reporter = _Recorder()
    ctx = LoopContext(device=torch.device("cpu"), reporter=reporter)  # type: ignore[arg-type]
    for epoch_loss in ([0.9, 0.8], [0.70, 0.71], [0.69, 0.68]):
        for value in epoch_loss:  # what compute_loss records per micro-batch
            task._loss_sum = task._loss_sum + torch.tensor(value)
            task._loss_count += 1
        task._finish_epoch_loss(ctx)
    assert task.epoch_losses == pytest.approx([0.85, 0.705, 0.685])
    assert len(reporter.warnings) == 1
    assert "within 5% of the margin 0.7 for 2 epochs (0.705, 0.685)" in reporter.warnings[0]
    assert "collapsing" in reporter.warnings[0] and "--whitening-init" in reporter.warnings[0]
    task._loss_sum, task._loss_count = torch.tensor(0.7), 1
    task._finish_epoch_loss(ctx)
    assert len(reporter.warnings) == 1  # once per run
    assert TeacherTask(task.config).epoch_losses == []
    other = TeacherTask(task.config)
    other.load_state_dict(task.state_dict())
    assert other.epoch_losses == task.epoch_losses  # a resumed run keeps counting


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1), dim=1)


@pytest.mark.parametrize("positives", ["all", "hardest"])
def test_compute_loss_pairs_anchors_with_all_or_the_hardest_positive(
        toy: Path, tmp_path: Path, positives: str) -> None:
    from raml_cli.train.losses import TripletLoss

    task = TeacherTask(_config(toy, tmp_path / "x.safetensors", negatives=1,
                               positives=positives, margin=0.5))
    task.loss = TripletLoss(0.5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 1, 1, generator=g)  # 4 anchors (classes 0, 0, 0, 1), 4 negatives
    labels = torch.tensor([0, 0, 0, 1, 5, 6, 7, 8])
    ctx = LoopContext(device=torch.device("cpu"))
    out = task.compute_loss(_Flatten(), (images, labels, 4), ctx)
    v = _Flatten()(images)
    a, n = v[:4], v[4:]

    def triplet(i: int, j: int) -> float:
        return max(0.0, float((a[i] - a[j]).pow(2).sum() - (a[i] - n[i]).pow(2).sum()) + 0.5)

    if positives == "all":  # 6 pairs among the three class-0 anchors; anchor 3 has none
        expected = np.mean([triplet(i, j) for i in range(3) for j in range(3) if i != j])
    else:
        hardest = [min((j for j in range(3) if j != i), key=lambda j: float(a[i] @ a[j]))
                   for i in range(3)]
        expected = np.mean([triplet(i, hardest[i]) for i in range(3)])
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
