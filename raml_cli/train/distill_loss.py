"""The distillation loss of RAML (METHOD.md, "Distillation"): absolute + two relational terms.

For one training image with ``P`` coupled views, ``s_i`` the student's unit vector of
view ``i`` at the query resolution and ``t_i`` the frozen teacher's unit vector of the
same view at the database resolution (``i = 1..P``)::

    L_abs = 1/P          sum_i        (1 - s_i . t_i)^2
    L_ts  = 1/(P (P-1))  sum_{i != j} (s_i . t_j - t_i . t_j)^2      (teacher-student)
    L_ss  = 1/(P (P-1))  sum_{i != j} (s_i . s_j - t_i . t_j)^2      (student-student)
    L     = L_abs + lambda1 * L_ts + lambda2 * L_ss

and the loss of a batch is the **sum** over its images (as in the paper and its
reference code; with AdamW the scale of the loss barely matters). With ``P = 1`` there
are no pairs and the relational terms are 0: only the absolute term remains (the
``regression`` variant).

>>> import torch
>>> t = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
>>> round(float(distillation_loss(t, t, 0.7, 0.6).total), 6)  # student = teacher: no loss
0.0
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from raml_cli.errors import InputError


class DistillationLoss(NamedTuple):
    """The loss of a batch and its terms, each summed over the batch's images.

    Attributes:
        total: ``L`` summed over the batch (a scalar tensor with gradient).
        absolute, teacher_student, student_student: the unweighted terms ``L_abs``,
            ``L_ts`` and ``L_ss`` summed over the batch (detached scalar tensors, for logs).
    """

    total: torch.Tensor
    absolute: torch.Tensor
    teacher_student: torch.Tensor
    student_student: torch.Tensor


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, lambda1: float = 0.0,
                      lambda2: float = 0.0) -> DistillationLoss:
    """RAML's distillation loss of a batch of coupled views.

    Args:
        student: ``[B, P, D]`` unit vectors of the student (query resolution).
        teacher: ``[B, P, D]`` unit vectors of the teacher (database resolution), the
            same views in the same order; no gradient flows into it.
        lambda1: weight of the teacher-student relational term ``L_ts``.
        lambda2: weight of the student-student relational term ``L_ss``.

    Returns:
        A :class:`DistillationLoss` whose ``total`` is the sum over the ``B`` images.

    Raises:
        InputError: the two tensors do not have the same ``[B, P, D]`` shape.
    """
    if student.dim() != 3 or student.shape != teacher.shape:
        raise InputError(f"The distillation loss needs student and teacher vectors of the same "
                         f"shape [B, P, D]; got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}.")
    student = student.float()
    teacher = teacher.detach().float()
    views = student.shape[1]
    absolute = (1.0 - (student * teacher).sum(dim=-1)).pow(2).mean(dim=1)  # [B]
    zero = student.new_zeros(student.shape[0])
    teacher_student, student_student = zero, zero
    if views > 1 and (lambda1 or lambda2):
        off_diagonal = ~torch.eye(views, dtype=torch.bool, device=student.device)
        pairs = views * (views - 1)
        teacher_sim = teacher @ teacher.transpose(1, 2)  # [B, P, P]: t_i . t_j
        cross_sim = student @ teacher.transpose(1, 2)  # s_i . t_j
        student_sim = student @ student.transpose(1, 2)  # s_i . s_j
        teacher_student = ((cross_sim - teacher_sim).pow(2) * off_diagonal).sum(dim=(1, 2))
        student_student = ((student_sim - teacher_sim).pow(2) * off_diagonal).sum(dim=(1, 2))
        teacher_student, student_student = teacher_student / pairs, student_student / pairs
    total = (absolute + lambda1 * teacher_student + lambda2 * student_student).sum()
    return DistillationLoss(total, absolute.detach().sum(), teacher_student.detach().sum(),
                            student_student.detach().sum())
