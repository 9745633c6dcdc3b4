"""Hardest positives and distance-weighted negatives against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from raml_cli.errors import DataError
from raml_cli.train.mining import (
    hardest_positive,
    log_inverse_sphere_density,
    negative_probabilities,
    positive_pairs,
    sample_negatives,
)


def test_hardest_positive() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # row 0: sims to rows 1, 2 are .8, 0 -> 2; row 1: .8, .6 -> 2; row 2: 0, .6 -> 0;
    # rows 3 and 4 only have each other; row 5 is alone in its class.
    assert hardest_positive(emb, labels).tolist() == [2, 2, 0, 4, 3, -1]


def test_positive_pairs_pair_each_anchor_with_every_other_image_of_its_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    anchors, positives = positive_pairs(labels)
    assert list(zip(anchors.tolist(), positives.tolist(), strict=True)) == [
        (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]  # row 5 is alone


def test_log_inverse_density_formula() -> None:
    d = torch.tensor([0.1, 1.0, 1.5])
    got = log_inverse_sphere_density(d, dim=4).exp()
    # n = 4: q(d)^-1 = d^-2 (1 - d^2/4)^-1/2, with d clipped at 0.5
    expected = [0.5 ** -2 * (1 - 0.25 / 4) ** -0.5, 1.0 * 0.75 ** -0.5,
                1.5 ** -2 * (1 - 2.25 / 4) ** -0.5]
    assert got.tolist() == pytest.approx(expected, rel=1e-9)
    # large n stays finite in log space (the raw powers would overflow float64)
    assert torch.isfinite(log_inverse_sphere_density(torch.tensor([0.5, 1.9]), 2048)).all()


def _at_distance(d: float) -> list[float]:
    cos = 1 - d * d / 2  # unit vector at Euclidean distance d from (1, 0, 0)
    return [cos, math.sqrt(max(0.0, 1 - cos * cos)), 0.0]


def test_negative_probabilities_hand_computed() -> None:
    # n = 3: q(d)^-1 = 1/d, clipped at .5 -> weights 2 (d=.2), 1 (d=1), .5 (d=2);
    # the same-class item (distance 0) gets probability 0.
    anchor = torch.tensor([[1.0, 0.0, 0.0]])
    pool = torch.tensor([[1.0, 0.0, 0.0], _at_distance(0.2), _at_distance(1.0), _at_distance(2.0)])
    probs = negative_probabilities(anchor, torch.tensor([7]), pool, torch.tensor([7, 1, 2, 3]),
                                   nonzero_loss_cutoff=None)
    assert probs[0].tolist() == pytest.approx([0.0, 2 / 3.5, 1 / 3.5, 0.5 / 3.5], abs=1e-6)


def test_negatives_beyond_the_nonzero_loss_cutoff_are_left_out() -> None:
    # Wu et al.'s code and PML's DistanceWeightedMiner: d >= 1.4 gets weight 0, as such a
    # negative gives no loss; n = 3 weights of the rest: 1/max(d, .5).
    anchor = torch.tensor([[1.0, 0.0, 0.0]])
    pool = torch.tensor([_at_distance(0.2), _at_distance(1.0), _at_distance(1.5),
                         _at_distance(2.0)])
    probs = negative_probabilities(anchor, torch.tensor([7]), pool, torch.tensor([1, 2, 3, 4]))
    assert probs[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0], abs=1e-6)
    # An anchor whose negatives all lie beyond the cutoff still draws from all of them.
    far = negative_probabilities(anchor, torch.tensor([7]), pool[2:], torch.tensor([3, 4]))
    assert far[0].tolist() == pytest.approx([(1 / 1.5) / (1 / 1.5 + 0.5), 0.5 / (1 / 1.5 + 0.5)],
                                            abs=1e-6)
    picks = sample_negatives(anchor.repeat(500, 1), torch.full((500,), 7), pool,
                             torch.tensor([1, 2, 3, 4]), 1, torch.Generator().manual_seed(0))
    assert set(picks.flatten().tolist()) == {0, 1}


def test_sample_negatives_follows_probabilities() -> None:
    pool = torch.tensor([[1.0, 0.0, 0.0], _at_distance(0.2), _at_distance(1.0), _at_distance(2.0)])
    pool_labels = torch.tensor([7, 1, 2, 3])
    anchors = torch.tensor([[1.0, 0.0, 0.0]]).repeat(8000, 1)
    labels = torch.full((8000,), 7)
    g = torch.Generator().manual_seed(0)
    picks = sample_negatives(anchors, labels, pool, pool_labels, 1, g,
                             nonzero_loss_cutoff=None).flatten()
    freq = torch.bincount(picks, minlength=4).double() / len(picks)
    assert freq[0] == 0
    assert freq.tolist()[1:] == pytest.approx([2 / 3.5, 1 / 3.5, 0.5 / 3.5], abs=0.025)
    again = sample_negatives(anchors, labels, pool, pool_labels, 1,
                             torch.Generator().manual_seed(0),
                             nonzero_loss_cutoff=None).flatten()
    assert torch.equal(picks, again)


def test_sample_negatives_without_then_with_replacement() -> None:
    pool = torch.tensor([[1.0, 0.0, 0.0], _at_distance(0.2), _at_distance(1.0), _at_distance(2.0)])
    g = torch.Generator().manual_seed(1)
    three = sample_negatives(pool[:1], torch.tensor([7]), pool, torch.tensor([7, 1, 2, 3]), 3, g,
                             nonzero_loss_cutoff=None)
    assert sorted(three[0].tolist()) == [1, 2, 3]  # all distinct other-class items
    five = sample_negatives(pool[:1], torch.tensor([7]), pool, torch.tensor([7, 1, 2, 3]), 5, g)
    assert 0 not in five[0].tolist()
    with pytest.raises(DataError, match="another class"):
        sample_negatives(pool[:1], torch.tensor([7]), pool, torch.tensor([7, 7, 7, 7]), 1, g)
