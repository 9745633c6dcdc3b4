"""Which faiss index to build for a database: the kinds, their memory, and the ``auto`` rules.

The rules follow autofaiss (``get_optimal_index_keys_v2``), in the order it tries them:

1. fewer than ``FLAT_BELOW`` rows (1,000): ``flat`` (exact; nothing approximate is faster);
2. fewer than ``QUANTIZE_FROM`` rows (10,000; too few to train quantizers): ``hnsw``;
3. ``hnsw`` when its graph and vectors fit the budget: ``(D + 2M) x 4`` bytes a row, with
   the largest ``M`` in 8..32 that fits (autofaiss's formula);
4. below ``IVF_FLAT_BELOW`` rows (1,000,000) and within the budget: ``ivf`` (IVF-Flat);
5. otherwise ``ivfpq``: IVF with product-quantised codes, the largest code (``m`` bytes a
   row, ``m`` dividing ``D``) that fits the budget.

A kind given explicitly is built as asked, but refused when its estimate exceeds the
budget. Sizes are estimates of the faiss structure in memory (the index file is the same
size plus the database's paths and labels).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from raml_cli.errors import InputError

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_BELOW = 1_000
QUANTIZE_FROM = 10_000
IVF_FLAT_BELOW = 1_000_000
HNSW_M_RANGE = (8, 32)
PQ_BYTES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
ID_BYTES = 8  # faiss stores one int64 id per row in an inverted list
DEFAULT_MEMORY = "4GB"
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9,
          "T": 1e12, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class IndexPlan:
    """What to build: the kind, its faiss factory string, its parameters, and why.

    Attributes:
        kind: ``flat``, ``hnsw``, ``ivf`` or ``ivfpq``.
        factory: the :func:`faiss.index_factory` string (inner-product metric).
        params: the kind's build parameters (``M``, ``nlist``, ``pq_bytes``).
        estimated_bytes: the index's size in memory.
        reason: one sentence saying why this kind was chosen.
        train_rows: how many sampled rows train it (0: needs no training).
    """

    kind: str
    factory: str
    params: dict[str, Any]
    estimated_bytes: int
    reason: str
    train_rows: int = 0
    search_params: dict[str, int] = field(default_factory=dict)


def parse_memory(text: str) -> int:
    """``"2GB"`` -> ``2_000_000_000`` bytes (also ``512MB``, ``1.5G``, ``4GiB``, plain bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"--memory takes a size such as 2GB, 512MB or 4GiB; got {text!r}.")
    return int(float(match.group(1)) * _UNITS[unit])


def human_bytes(num: float) -> str:
    """``2_048_000_000`` -> ``2.05 GB``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num >= size:
            return f"{num / size:.2f} {unit}"
    return f"{int(num)} B"


def num_lists(num: int) -> int:
    """IVF lists: the power of two nearest ``sqrt(N)``, at least 1, at most ``N / 39``.

    faiss's guideline is 4-16 x sqrt(N) for the fastest search of very large databases;
    sqrt(N) keeps the k-means training of a million rows within about a minute on a small
    CPU, and faiss wants at least 39 training rows per list.
    """
    nearest = 2 ** round(math.log2(max(1.0, math.sqrt(num))))
    return int(max(1, min(nearest, num // 39)))


def train_rows_for(nlist: int, num: int, pq: bool) -> int:
    """Rows sampled to train IVF (40 per list) and PQ (at least 256 x 40 for 8-bit codes)."""
    wanted = 40 * nlist
    if pq:
        wanted = max(wanted, 256 * 40)
    return int(min(num, wanted))


def estimate_bytes(kind: str, num: int, dim: int, params: dict[str, Any]) -> int:
    """The size of a faiss index of ``kind`` over ``num x dim`` float32 rows, in bytes."""
    if kind == "flat":
        return 4 * num * dim
    if kind == "hnsw":
        return 4 * num * (dim + 2 * int(params["M"]))
    centroids = 4 * int(params["nlist"]) * dim
    if kind == "ivf":
        return num * (4 * dim + ID_BYTES) + centroids
    if kind == "ivfpq":
        codebooks = 4 * 256 * dim
        return num * (int(params["pq_bytes"]) + ID_BYTES) + centroids + codebooks
    raise InputError(f"Unknown index kind {kind!r}; choose one of {', '.join(KINDS)}.")


def _pq_bytes(num: int, dim: int, budget: int, nlist: int) -> int | None:
    for m in PQ_BYTES:
        if m <= dim and dim % m == 0 and \
                estimate_bytes("ivfpq", num, dim, {"pq_bytes": m, "nlist": nlist}) <= budget:
            return m
    return None


def _plan(kind: str, num: int, dim: int, budget: int, reason: str,
          hnsw_m: int = 32) -> IndexPlan:
    if kind == "flat":
        return IndexPlan("flat", "Flat", {}, estimate_bytes("flat", num, dim, {}), reason)
    if kind == "hnsw":
        params = {"M": hnsw_m}
        return IndexPlan("hnsw", f"HNSW{hnsw_m},Flat", params,
                         estimate_bytes("hnsw", num, dim, params), reason,
                         search_params={"efSearch": 64})
    nlist = num_lists(num)
    if kind == "ivf":
        params = {"nlist": nlist}
        return IndexPlan("ivf", f"IVF{nlist},Flat", params,
                         estimate_bytes("ivf", num, dim, params), reason,
                         train_rows_for(nlist, num, pq=False),
                         search_params={"nprobe": min(nlist, 16)})
    m = _pq_bytes(num, dim, budget, nlist)
    if m is None:
        # Explicitly asked and nothing fits: plan the smallest code so the error can say so.
        m = next((v for v in reversed(PQ_BYTES) if v <= dim and dim % v == 0), None)
        if m is None:
            raise InputError(f"An ivfpq index needs an embedding size divisible by 4; these "
                             f"rows are {dim}-d. Use --kind flat, hnsw or ivf.")
    params = {"nlist": nlist, "pq_bytes": m}
    return IndexPlan("ivfpq", f"IVF{nlist},PQ{m}x8np", params,
                     estimate_bytes("ivfpq", num, dim, params), reason,
                     train_rows_for(nlist, num, pq=True),
                     search_params={"nprobe": min(nlist, 16)})


def choose_index(num: int, dim: int, budget: int, kind: str = "auto") -> IndexPlan:
    """The index to build over ``num x dim`` rows within ``budget`` bytes (module rules).

    >>> choose_index(500, 64, 10**9).kind
    'flat'
    >>> choose_index(2_000_000, 512, 2 * 10**9).factory
    'IVF1024,PQ256x8np'
    """
    if kind not in KINDS:
        raise InputError(f"--kind {kind!r} is not an index kind; choose one of "
                         f"{', '.join(KINDS)}.")
    size = f"{num:,} rows x {dim}"
    if kind != "auto":
        plan = _plan(kind, num, dim, budget, f"--kind {kind} was asked for")
        if kind in ("ivf", "ivfpq") and num < 39:
            raise InputError(f"An {kind} index needs at least 39 rows to train on; the "
                             f"database has {num}. Use --kind flat.")
        if plan.estimated_bytes > budget:
            raise InputError(
                f"A {kind} index of {size} needs about {human_bytes(plan.estimated_bytes)}, "
                f"more than the --memory budget of {human_bytes(budget)}. Raise --memory, or "
                "use --kind auto to get the best index that fits.")
        return plan
    if num < FLAT_BELOW:
        return _plan("flat", num, dim, budget,
                     f"{size} is under {FLAT_BELOW:,} rows, where exact search is fastest")
    if num < QUANTIZE_FROM:
        return _plan("hnsw", num, dim, budget, f"{size} is under {QUANTIZE_FROM:,} rows, too "
                     "few to train quantizers; a graph (HNSW) is faster than exact search",
                     hnsw_m=16)
    m_hnsw = int((budget / (4 * num) - dim) // 2)
    if m_hnsw >= HNSW_M_RANGE[0]:
        m_hnsw = min(m_hnsw, HNSW_M_RANGE[1])
        return _plan("hnsw", num, dim, budget, f"an HNSW graph (M={m_hnsw}) of {size} fits "
                     f"the {human_bytes(budget)} budget", hnsw_m=m_hnsw)
    ivf = _plan("ivf", num, dim, budget, "")
    if num < IVF_FLAT_BELOW and ivf.estimated_bytes <= budget:
        ivf.reason = (f"HNSW of {size} does not fit {human_bytes(budget)}; IVF-Flat "
                      f"({human_bytes(ivf.estimated_bytes)}) does, below "
                      f"{IVF_FLAT_BELOW:,} rows")
        return ivf
    plan = _plan("ivfpq", num, dim, budget, "")
    if plan.estimated_bytes > budget:
        raise InputError(
            f"No index of {size} fits the --memory budget of {human_bytes(budget)} (the "
            f"smallest, {plan.factory}, needs {human_bytes(plan.estimated_bytes)}). Raise "
            "--memory.")
    plan.reason = (f"uncompressed indexes of {size} do not fit {human_bytes(budget)}"
                   if num < IVF_FLAT_BELOW else f"{size} is {IVF_FLAT_BELOW:,} rows or more")
    plan.reason += (f"; IVF-PQ with {plan.params['pq_bytes']}-byte codes "
                    f"({human_bytes(plan.estimated_bytes)}) is the most accurate that fits")
    return plan
