"""--optimizer and --scheduler: the reference's formulas, bit-exact resume, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raml_cli.cli.app import app
from raml_cli.errors import InputError
from raml_cli.model.files import read_model_info
from raml_cli.train import options, schedule
from raml_cli.train.checkpoint import checkpoint_path, load_checkpoint
from raml_cli.train.loop import run_training
from raml_cli.train.runlog import log_path, read_log
from raml_cli.train.schedule import build_optimizer, build_scheduler

sys.path.insert(0, str(Path(__file__).parent))
from test_loop import KilledError, LinearTask, _config  # noqa: E402

LR = 1e-2


def _lrs(name: str, steps: int, optimizer: str = "adamw") -> list[list[float]]:
    """Each group's lr before each of ``steps`` scheduler steps (groups at lr and 10 lr)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": LR},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 10 * LR}]
    opt = build_optimizer(groups, optimizer, LR, 0.0)
    sched = build_scheduler(opt, name, steps)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_cyclic_is_triangular2_from_a_tenth_of_lr():
    total = 60  # steps up per half cycle: 60 // 6 = 10
    for t, (low, high) in enumerate(_lrs("cyclic", total)):
        cycle = math.floor(1 + t / 20)
        x = abs(t / 10 - 2 * cycle + 1)
        expected = LR / 10 + (LR - LR / 10) * max(0.0, 1 - x) / 2 ** (cycle - 1)
        assert low == pytest.approx(expected) and high == pytest.approx(10 * expected)
    lrs = [low for low, _ in _lrs("cyclic", total)]
    assert max(lrs) == pytest.approx(LR) and lrs[30] == pytest.approx(LR / 10 + 0.45 * LR)


def test_onecycle_starts_at_a_tenth_peaks_and_ends_near_zero():
    lrs = [low for low, _ in _lrs("onecycle", 100)]
    assert lrs[0] == pytest.approx(LR / 10)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 29  # 30% warm-up
    assert lrs[-1] < LR / 1e4


def test_exponential_and_none():
    lrs = [low for low, _ in _lrs("exponential", 5)]
    assert lrs == pytest.approx([LR * math.exp(-0.001 * k) for k in range(5)])
    assert [g for g in _lrs("none", 5, "sgd")] == [[LR, 10 * LR]] * 5


def test_exponential_decays_once_per_epoch_in_the_loop(tmp_path):
    out = tmp_path / "m.safetensors"
    run_training(LinearTask(), _config(out, scheduler="exponential", val_every=0))
    steps = [r for r in read_log(log_path(out)) if r["event"] == "step"]
    for record in steps:  # 3 steps per epoch
        assert record["lr"] == pytest.approx(LR * math.exp(-0.001 * (record["epoch"] - 1)))


def test_the_choices_shown_in_help_are_the_engines():
    assert options.OPTIMIZER_CHOICES == schedule.OPTIMIZER_CHOICES
    assert options.SCHEDULER_CHOICES == schedule.SCHEDULER_CHOICES


@pytest.mark.parametrize("optimizer, scheduler, kill_at", [
    ("adamw", "cyclic", (1, 3)), ("adam", "exponential", (1, 3)),
    ("adam", "exponential", (2, 0)), ("sgd", "onecycle", (1, 3)), ("sgd", "none", (2, 0)),
])
def test_kill_and_resume_gives_the_uninterrupted_model(tmp_path, optimizer, scheduler,
                                                       kill_at):
    kw = dict(optimizer=optimizer, scheduler=scheduler, momentum=0.8)
    reference = LinearTask()
    run_training(reference, _config(tmp_path / "a.safetensors", **kw))
    out = tmp_path / "b.safetensors"
    with pytest.raises(KilledError):
        run_training(LinearTask(kill_at=kill_at), _config(out, checkpoint_every=1, **kw))
    stored = json.loads(load_checkpoint(checkpoint_path(out))["signature"])["loop"]
    assert (stored["optimizer"], stored["scheduler"]) == (optimizer, scheduler)
    resumed = LinearTask()
    run_training(resumed, _config(out, checkpoint_every=1, resume=True, **kw))
    for key, value in reference.saved.items():
        assert torch.equal(value, resumed.saved[key]), key


def test_resume_refuses_another_schedule(tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(KilledError):
        run_training(LinearTask(kill_at=(1, 0)), _config(out))
    with pytest.raises(Exception, match="loop.scheduler: .onecycle. -> .cyclic."):
        run_training(LinearTask(), _config(out, scheduler="cyclic", resume=True))


def test_a_bad_choice_names_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match="adamw, adam, sgd"):
        run_training(LinearTask(), _config(tmp_path / "m.safetensors", optimizer="lamb"))


def test_train_teacher_records_them_in_the_model_file(tmp_path):
    from raml_cli.data.toy import generate_toy

    data = tmp_path / "toy"
    generate_toy(data, seed=0, num_classes=6, images_per_class=4, min_side=36, max_side=44)
    out = tmp_path / "t.safetensors"
    tiny = ["--dataset", str(data), "-o", str(out), "--arch", "test_resnet", "--no-pretrained",
            "--dim", "16", "--res", "32", "--batch-size", "4", "--negatives", "2",
            "--pool-size", "50", "--workers", "0", "--device", "cpu", "--epochs", "1",
            "--images-per-epoch", "8", "--whitening-init", "random"]
    runner = CliRunner()
    bad = runner.invoke(app, ["train-teacher", *tiny, "--scheduler", "step"])
    assert bad.exit_code == 2 and "onecycle, cyclic, exponential, none" in bad.output
    assert "Traceback" not in bad.output
    result = runner.invoke(app, ["train-teacher", *tiny, "--pool", "gemmp", "--optimizer",
                                 "SGD", "--momentum", "0.5", "--scheduler", "cyclic"])
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.pooling == "gemmp"
    assert (info.config["optimizer"], info.config["momentum"], info.config["scheduler"]) == (
        "sgd", 0.5, "cyclic")


def test_a_checkpoint_written_before_these_options_resumes(tmp_path):
    from raml_cli.train.checkpoint import save_checkpoint

    out = tmp_path / "m.safetensors"
    with pytest.raises(KilledError):
        run_training(LinearTask(kill_at=(1, 0)), _config(out))
    state = load_checkpoint(checkpoint_path(out))
    signature = json.loads(state["signature"])
    for key in ("optimizer", "momentum", "scheduler"):
        del signature["loop"][key]
    state["signature"] = json.dumps(signature)
    save_checkpoint(checkpoint_path(out), state)
    assert run_training(LinearTask(), _config(out, resume=True)).resumed_from == (1, 0)
