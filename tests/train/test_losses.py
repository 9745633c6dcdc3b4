"""The triplet loss against hand-computed cases, and the loss registry."""

from __future__ import annotations

import math

import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.train.losses import TripletLoss, build_loss, loss_names


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_triplet_loss_hand_computed() -> None:
    # anchor 0 at 0 deg, positive at 90 deg: |a-p|^2 = 2.
    #   negative at 180 deg: |a-n|^2 = 4 -> max(0, 2 - 4 + .7) = 0
    #   negative at 60 deg:  |a-n|^2 = 1 -> max(0, 2 - 1 + .7) = 1.7
    # anchor 1 at 90 deg, positive identical (0): negatives at 270 (4) and 0 deg (2) -> 0, 0
    anchors = torch.tensor([_unit(0), _unit(90)], requires_grad=True)
    positives = torch.tensor([_unit(90), _unit(90)])
    negatives = torch.tensor([[_unit(180), _unit(60)], [_unit(270), _unit(0)]])
    loss = TripletLoss(margin=0.7)(anchors, positives, negatives)
    assert loss.item() == pytest.approx(1.7 / 4, abs=1e-6)
    loss.backward()
    # Only the active triplet (anchor 0, negative at 60 deg) pushes: d/da of
    # (|a-p|^2 - |a-n|^2)/4 = (2(a-p) - 2(a-n))/4 = (n - p)/2.
    expected = (torch.tensor(_unit(60)) - torch.tensor(_unit(90))) / 2
    assert torch.allclose(anchors.grad[0], expected, atol=1e-6)
    assert torch.allclose(anchors.grad[1], torch.zeros(2))


def test_triplet_margin_zero_and_empty() -> None:
    a = torch.tensor([_unit(0)])
    assert TripletLoss(0.0)(a, a, torch.tensor([[_unit(10)]])).item() == 0.0
    empty = torch.zeros(0, 2, requires_grad=True)
    out = TripletLoss()(empty, empty, torch.zeros(0, 3, 2))
    assert out.item() == 0.0 and out.requires_grad


def test_registry() -> None:
    assert "triplet" in loss_names()
    assert build_loss("triplet", margin=0.3).margin == 0.3
    with pytest.raises(InputError, match="Choose one of: .*triplet"):
        build_loss("contrastive-ish")
    with pytest.raises(InputError, match="margin"):
        build_loss("triplet", margin=-1)
