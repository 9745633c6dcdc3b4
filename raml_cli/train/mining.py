"""Choosing positives and negatives for the triplet loss.

- :func:`positive_pairs`: every (anchor, positive) pair of a batch: each anchor with
  each other image of its class (the reference code's choice, and the default).
- :func:`hardest_positive`: for each anchor of a batch, the least similar other
  image of its class in the batch. Combined with hard negatives it collapses a
  pretrained network's space (Wu et al., section 3; docs/train.md has the numbers).
- :func:`sample_negatives`: distance-weighted sampling (Wu et al., "Sampling
  matters in deep embedding learning", ICCV 2017). For unit vectors in ``n``
  dimensions, the distance ``d`` between two random points has density
  ``q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2)``; sampling a negative with probability
  proportional to ``q(d)^-1`` spreads the chosen negatives uniformly over
  distances instead of concentrating them at ``d ≈ sqrt(2)``. Distances are clipped
  below at 0.5 (so the nearest negatives do not take all the mass and their noisy
  gradients do not dominate), images of the anchor's class get probability 0,
  negatives at or beyond ``nonzero_loss_cutoff`` (1.4, as in Wu et al.'s code and
  pytorch-metric-learning's ``DistanceWeightedMiner``) get probability 0 too (so
  the draws are spread over the negatives that can still give a loss; an anchor
  with none below the cutoff draws from all its negatives), and the weights are
  computed in log space and shifted by their maximum before exponentiation (``n``
  is 512 or 2048: the raw powers overflow).
"""

from __future__ import annotations

import torch

from raml_cli.errors import DataError

DISTANCE_CUTOFF = 0.5
NONZERO_LOSS_CUTOFF = 1.4


POSITIVE_CHOICES = ("all", "hardest")


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair ``(anchor, positive)`` of distinct same-class rows of a batch.

    Args:
        labels: ``[B]`` class ids.

    Returns:
        Two ``[T]`` int64 index tensors (anchors in increasing order, then positives);
        a row alone in its class takes part in no pair.

    >>> positive_pairs(torch.tensor([3, 3, 5]))
    (tensor([0, 1]), tensor([1, 0]))
    """
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    anchors, positives = torch.nonzero(same, as_tuple=True)
    return anchors, positives


def hardest_positive(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Index of the hardest (least similar) same-class other item, per row.

    Args:
        embeddings: ``[B, D]`` unit rows.
        labels: ``[B]`` class ids.

    Returns:
        ``[B]`` int64 indices into the batch; ``-1`` for a row with no other image of its
        class. Ties go to the lowest index.
    """
    with torch.no_grad():
        sim = embeddings.float() @ embeddings.float().T
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        sim = sim.masked_fill(~same, float("inf"))
        index = sim.argmin(dim=1)
        return torch.where(same.any(dim=1), index, torch.full_like(index, -1))


def log_inverse_sphere_density(distances: torch.Tensor, dim: int,
                               cutoff: float = DISTANCE_CUTOFF) -> torch.Tensor:
    """``log q(d)^-1 = -(n-2) log d - ((n-3)/2) log(1 - d^2/4)`` with ``d`` clipped at ``cutoff``.

    Args:
        distances: Euclidean distances between unit vectors, in ``[0, 2]``.
        dim: ``n``, the dimension of the vectors.
        cutoff: the lower clip of ``d`` (0.5 as in Wu et al.).

    ``1 - d^2/4`` is floored at 1e-12 so that antipodal points (``d = 2``) get a large
    finite weight instead of an infinite one.
    """
    d = distances.double().clamp(min=cutoff, max=2.0)
    log_q = (dim - 2.0) * torch.log(d) + ((dim - 3.0) / 2.0) * torch.log(
        (1.0 - d.pow(2) / 4.0).clamp(min=1e-12))
    return -log_q


def negative_probabilities(anchors: torch.Tensor, anchor_labels: torch.Tensor,
                           pool: torch.Tensor, pool_labels: torch.Tensor,
                           cutoff: float = DISTANCE_CUTOFF,
                           nonzero_loss_cutoff: float | None = NONZERO_LOSS_CUTOFF
                           ) -> torch.Tensor:
    """Sampling probabilities ``[A, M]`` of each pool item as a negative of each anchor.

    Args:
        anchors: ``[A, D]`` unit rows; ``anchor_labels``: ``[A]``.
        pool: ``[M, D]`` unit rows; ``pool_labels``: ``[M]``.
        cutoff: the lower clip of the distance.
        nonzero_loss_cutoff: negatives at this Euclidean distance or farther get
            probability 0, unless the anchor has no other-class item nearer (``None``:
            no upper cutoff).

    Returns:
        float64 rows summing to 1 (all zeros for an anchor with no other-class item);
        same-class items have probability exactly 0.
    """
    dim = anchors.shape[1]
    sim = anchors.double() @ pool.double().T
    distances = (2.0 - 2.0 * sim).clamp(min=0.0).sqrt()
    log_w = log_inverse_sphere_density(distances, dim, cutoff)
    same = anchor_labels[:, None].to(pool_labels.device) == pool_labels[None, :]
    log_w = log_w.masked_fill(same, float("-inf"))
    if nonzero_loss_cutoff is not None:
        far = distances >= nonzero_loss_cutoff
        near_any = (~far & ~same).any(dim=1, keepdim=True)
        log_w = log_w.masked_fill(far & near_any, float("-inf"))
    peak = log_w.max(dim=1, keepdim=True).values
    weights = torch.exp(log_w - torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)))
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp(min=1e-300), weights)


def sample_negatives(anchors: torch.Tensor, anchor_labels: torch.Tensor,
                     pool: torch.Tensor, pool_labels: torch.Tensor, num: int,
                     generator: torch.Generator, cutoff: float = DISTANCE_CUTOFF,
                     chunk: int = 1024,
                     nonzero_loss_cutoff: float | None = NONZERO_LOSS_CUTOFF) -> torch.Tensor:
    """Draw ``num`` negatives per anchor by distance-weighted sampling (CPU, deterministic).

    Draws are without replacement when the anchor has at least ``num`` other-class items
    in the pool, else with replacement.

    Args:
        anchors, anchor_labels, pool, pool_labels: as in :func:`negative_probabilities`
            (moved to the CPU).
        num: negatives per anchor.
        generator: a CPU generator (the result depends only on it and the inputs).
        chunk: anchors processed at once (bounds memory to ``chunk * M`` doubles).
        nonzero_loss_cutoff: as in :func:`negative_probabilities`.

    Returns:
        ``[A, num]`` int64 positions in the pool.

    Raises:
        DataError: an anchor whose class is the only one in the pool.
    """
    anchors, pool = anchors.detach().cpu(), pool.detach().cpu()
    anchor_labels, pool_labels = anchor_labels.cpu(), pool_labels.cpu()
    out = torch.empty((anchors.shape[0], num), dtype=torch.int64)
    for start in range(0, anchors.shape[0], chunk):
        stop = start + chunk
        probs = negative_probabilities(anchors[start:stop], anchor_labels[start:stop], pool,
                                       pool_labels, cutoff, nonzero_loss_cutoff)
        available = (probs > 0).sum(dim=1)
        if bool((available == 0).any()):
            raise DataError(
                "The negative pool holds no image of another class for some anchors. Use a "
                "dataset with at least 2 classes and a larger --pool-size."
            )
        scarce = available < num
        for rows, replace in ((~scarce, False), (scarce, True)):
            index = torch.nonzero(rows).flatten()
            if len(index):
                out[start + index] = torch.multinomial(probs[index].float(), num,
                                                       replacement=replace, generator=generator)
    return out
