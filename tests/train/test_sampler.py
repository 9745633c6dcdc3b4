"""Class-balanced batches: grouping, determinism, sharding, errors; per-item seeds."""

from __future__ import annotations

import pytest
import torch

from raml_cli.errors import DataError, InputError
from raml_cli.train.sampler import ClassBalancedSampler, SeededDataset, item_seeds

# class 0: 9 images, class 1: 4, class 2: 3 (too few for groups of 4), class 3: 8
LABELS = [0] * 9 + [1] * 4 + [2] * 3 + [3] * 8


def test_groups_and_counts() -> None:
    s = ClassBalancedSampler(LABELS, samples_per_class=4, batch_size=8)
    # whole groups: 2 (class 0) + 1 + 0 + 2 = 5 groups = 20 anchors -> 2 batches of 8
    assert s.dropped_classes == [2] and s.anchors_available == 20
    assert s.num_batches(1) == 2 and s.num_batches(2) == 1 and s.num_batches(3) == 0
    batches = s.epoch_batches(seed=5, epoch=0)
    assert len(batches) == 2 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 16  # no image twice in an epoch
    for b in batches:
        for g in range(0, 8, 4):
            assert len({LABELS[i] for i in b[g:g + 4]}) == 1  # groups of one class
        assert all(LABELS[i] != 2 for i in b)


def test_deterministic_per_seed_and_epoch() -> None:
    s = ClassBalancedSampler(LABELS, samples_per_class=4, batch_size=4)
    assert s.epoch_batches(1, 0) == s.epoch_batches(1, 0)
    assert s.epoch_batches(1, 0) != s.epoch_batches(1, 1)
    assert s.epoch_batches(1, 0) != s.epoch_batches(2, 0)


def test_images_per_epoch_and_shards() -> None:
    s = ClassBalancedSampler(LABELS, samples_per_class=4, batch_size=4, images_per_epoch=12)
    assert s.num_batches(1) == 3 and s.num_batches(2) == 1
    plan = s.epoch_batches(0, 0, world_size=2)
    assert len(plan) == 2
    r0, r1 = s.shard(plan, 0, 2), s.shard(plan, 1, 2)
    assert r0 == [plan[0]] and r1 == [plan[1]]
    assert not set(r0[0]) & set(r1[0])
    assert ClassBalancedSampler.shard(list(range(5)), 1, 2) == [1, 3]


def test_errors_name_the_fix() -> None:
    with pytest.raises(InputError, match="multiple of --samples-per-class"):
        ClassBalancedSampler(LABELS, samples_per_class=4, batch_size=6)
    with pytest.raises(DataError, match="Too few images per class"):
        ClassBalancedSampler([0, 0, 1, 1, 2], samples_per_class=4, batch_size=4)
    s = ClassBalancedSampler(LABELS, samples_per_class=4, batch_size=16)
    s.check_fits(1)
    with pytest.raises(DataError, match="--batch-size"):
        s.check_fits(2)


class _Noise:
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(3) + i


def test_seeded_dataset_is_order_independent() -> None:
    ds = SeededDataset(_Noise())
    seeds = item_seeds(0, 0, 4)
    first = [ds[(i, int(s))] for i, s in enumerate(seeds)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    reversed_ = [ds[(i, int(s))] for i, s in reversed(list(enumerate(seeds)))][::-1]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    for a, b in zip(first, reversed_, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0] - 0, first[1] - 1)
    assert item_seeds(0, 0, 4).tolist() == seeds.tolist()
    assert item_seeds(0, 1, 4).tolist() != seeds.tolist()
