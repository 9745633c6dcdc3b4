"""The distillation loss against a case computed by hand (METHOD.md, "Distillation")."""

from __future__ import annotations

import math

import pytest
import torch

from raml_cli.errors import InputError
from raml_cli.train.distill_loss import distillation_loss


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 1: t = (e1, e2), s = (e1, unit vector at 60 degrees); image 2: s = t."""
    half, root3 = 0.5, math.sqrt(3) / 2
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                            [[0.6, 0.8], [0.8, -0.6]]])
    student = torch.tensor([[[1.0, 0.0], [half, root3]],
                            [[0.6, 0.8], [0.8, -0.6]]])
    return student, teacher


def test_matches_hand_computed_terms() -> None:
    student, teacher = _hand_case()
    # Image 1 by hand (P = 2, t1.t2 = 0, s1.t2 = 0, s2.t1 = 1/2, s1.s2 = 1/2, s2.t2 = sqrt3/2):
    #   L_abs = ((1 - 1)^2 + (1 - sqrt3/2)^2) / 2
    #   L_ts  = ((s1.t2 - 0)^2 + (s2.t1 - 0)^2) / (2 * 1) = (0 + 1/4) / 2 = 1/8
    #   L_ss  = ((s1.s2 - 0)^2 + (s2.s1 - 0)^2) / 2 = 1/4
    # Image 2 has s = t: every term is 0, so the batch sums equal image 1's terms.
    expected_abs = (1 - math.sqrt(3) / 2) ** 2 / 2
    out = distillation_loss(student, teacher, lambda1=0.5, lambda2=0.25)
    assert out.absolute.item() == pytest.approx(expected_abs, abs=1e-6)
    assert out.teacher_student.item() == pytest.approx(1 / 8, abs=1e-6)
    assert out.student_student.item() == pytest.approx(1 / 4, abs=1e-6)
    assert out.total.item() == pytest.approx(expected_abs + 0.5 / 8 + 0.25 / 4, abs=1e-6)


def test_sums_over_the_batch_not_mean() -> None:
    student, teacher = _hand_case()
    one = distillation_loss(student[:1], teacher[:1], 0.7, 0.6).total
    twice = distillation_loss(student[[0, 0]], teacher[[0, 0]], 0.7, 0.6).total
    assert twice.item() == pytest.approx(2 * one.item(), rel=1e-6)


def test_single_view_is_the_regression_loss() -> None:
    student = torch.nn.functional.normalize(torch.randn(5, 1, 16), dim=-1)
    teacher = torch.nn.functional.normalize(torch.randn(5, 1, 16), dim=-1)
    out = distillation_loss(student, teacher, lambda1=0.8, lambda2=0.7)
    expected = (1 - (student * teacher).sum(-1)).pow(2).sum()
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.teacher_student.item() == 0.0 and out.student_student.item() == 0.0


def test_gradient_reaches_the_student_only() -> None:
    student, teacher = _hand_case()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    distillation_loss(student, teacher, 0.5, 0.5).total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"\[B, P, D\]"):
        distillation_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))
