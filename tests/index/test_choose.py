import pytest

from raml_cli.errors import InputError
from raml_cli.index.choose import choose_index, estimate_bytes, num_lists, parse_memory


@pytest.mark.parametrize("text, value", [("2GB", 2 * 10**9), ("512MB", 512 * 10**6),
                                         ("1.5G", 1.5e9), ("4GiB", 4 * 2**30), ("100", 100)])
def test_memory_sizes_are_read_as_a_user_writes_them(text, value) -> None:
    assert parse_memory(text) == int(value)


@pytest.mark.parametrize("text", ["", "two GB", "-1GB", "3XB", "0"])
def test_a_bad_memory_size_is_refused_with_an_example(text) -> None:
    with pytest.raises(InputError, match="2GB"):
        parse_memory(text)


def test_auto_follows_the_size_and_budget_rules() -> None:
    assert choose_index(999, 512, 10**9).kind == "flat"
    assert choose_index(5_000, 512, 10**9).factory == "HNSW16,Flat"
    assert choose_index(100_000, 512, 4 * 10**9).factory == "HNSW32,Flat"
    ivf = choose_index(500_000, 512, int(1.05e9))  # HNSW no longer fits, IVF-Flat does
    assert ivf.kind == "ivf" and ivf.estimated_bytes <= 1.05e9
    pq = choose_index(1_000_000, 512, 2 * 10**9)
    assert pq.kind == "ivfpq" and pq.params["pq_bytes"] == 256
    assert "2.00 GB" in pq.reason or "1,000,000" in pq.reason
    small = choose_index(1_000_000, 512, 100 * 10**6)
    assert small.kind == "ivfpq" and small.estimated_bytes <= 100 * 10**6
    assert small.params["pq_bytes"] < 256


def test_every_plan_states_why_and_fits_its_estimate() -> None:
    for num in (500, 5_000, 50_000, 2_000_000):
        plan = choose_index(num, 128, 10**9)
        assert plan.reason
        assert plan.estimated_bytes == estimate_bytes(plan.kind, num, 128, plan.params)


def test_an_explicit_kind_over_the_budget_is_refused() -> None:
    with pytest.raises(InputError, match="--memory"):
        choose_index(1_000_000, 512, 10**9, kind="flat")
    with pytest.raises(InputError, match="auto, flat"):
        choose_index(1_000, 512, 10**9, kind="annoy")


def test_lists_stay_trainable() -> None:
    assert num_lists(1_000_000) == 1024
    assert num_lists(100) * 39 <= 100
