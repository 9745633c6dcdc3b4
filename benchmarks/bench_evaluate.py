"""`raml evaluate` against the bare float32 matrix product, on a synthetic SOP-sized problem.

The problem (default): 60,502 queries = 60,502 database items (the SOP test split's size),
512-d unit vectors, 11,316 classes of 2-12 images. Each class has a random centre; an
image is its centre plus isotropic noise whose strength varies per image, normalised.
The noise level gives SOP-like numbers for a good model (recall@1 ~ 0.81, trapezoid mAP
~ 0.55; the paper's SOP: 81 / 60): the work of the exact evaluation grows with how deep
the positives sit in the rankings, so an easier or harder problem would flatter or
punish it. The query file is a perturbed copy of the database file with the same paths
(a student against its teacher), so each query is excluded from its own ranking.

Other people share this machine and its load swings within seconds, so the two sides
are measured **interleaved, block by block**: for each block of queries (the engine's
block, 1,024), in rotating order,

- **engine**: the engine's work on that block (``positive_ranks`` yields it: thresholds,
  score products, candidates, ranks; then the metrics of the block);
- **bare product**: ``Q_block @ DB.T`` in float32, nothing done with the scores, with
  NumPy (OpenBLAS, what the engine uses) in the engine's chunks of ~4,096 database rows
  and in one product against all rows (output buffers reused; the whole 60,502 x 60,502
  matrix would need 14.6 GB, so "one go" is not possible). With ``--device cuda`` the
  engine is the torch one on the GPU and the bare product is ``torch.mm`` on the GPU
  (float32, TF32 off, vectors already on the device, synchronised after each block).

Each arm starts after a short untimed pause (:data:`QUIET_SECONDS`). Each side's time is
the sum over blocks; the engine's total adds reading and checking
both files and averaging the metrics. The ratio is taken to the fastest bare product.
Then the command runs in its own process (``raml evaluate q.h5 db.h5 --k 1,10,100,1000
--json --quiet --device D``; ``--cli-runs`` times, default 2), each run between two bare products
(NumPy, engine chunks) whose mean is its reference: wall time (interpreter start and
imports included) and peak resident memory (``VmHWM`` of ``/proc/self/status`` at exit:
everything the process held, BLAS buffers included; tracemalloc would see only Python's
and NumPy's allocations). Last, the bare
product with torch (MKL) in the engine's blocks, run alone (torch's idle OpenMP threads
spin after each product and would slow NumPy runs interleaved with it). ``--backends``
adds the time of one 1,024-query product with torch, NumPy and faiss-cpu
(``IndexFlatIP.search``, k=1, its cheapest exact search). Load averages are printed.

Usage:

    .venv/bin/python benchmarks/bench_evaluate.py                 # the full SOP-sized problem
    .venv/bin/python benchmarks/bench_evaluate.py --small --repeat 9  # 6,050 items, seconds each
    .venv/bin/python benchmarks/bench_evaluate.py --no-cli --backends --json
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda --block-size 4096 \
        --chunk-size 16384                                        # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raml_cli.evaluate import check_ks, evaluate_sets, score_engine
from raml_cli.evaluate.metrics import metric_keys, per_query_metrics
from raml_cli.evaluate.neighbours import (
    balanced_part_size,
    default_block_size,
    default_chunk_size,
    positive_ranks,
    scan_threads,
)
from raml_cli.evaluate.torch_ranks import exact_float32
from raml_cli.store import read_embeddings, write_embeddings

KS = (1, 10, 100, 1000)
QUIET_SECONDS = 0.2
"""Pause before each timed arm of the interleaving. After a multi-threaded product,
OpenBLAS's worker threads busy-wait for about 0.1 s; an engine block timed right after
one (its own threads run single-threaded BLAS, so they never use those workers) would
share the cores with that spinning, which ``raml evaluate`` on its own never meets
(measured: 114 ms for the same work right after a product, 88 ms after 0.2 s)."""


def class_sizes(rng: np.random.Generator, classes: int, images: int) -> np.ndarray:
    """``classes`` sizes in [2, 12] summing to ``images``, skewed to small classes like SOP."""
    sizes = np.clip(2 + rng.poisson(max(images / classes - 2, 0.1), classes), 2, 12)
    while sizes.sum() != images:
        i = rng.integers(classes)
        if sizes.sum() < images and sizes[i] < 12:
            sizes[i] += 1
        elif sizes.sum() > images and sizes[i] > 2:
            sizes[i] -= 1
    return sizes


def synthetic(images: int, classes: int, dim: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, database, labels): float32 unit rows ``[images, dim]`` and int64 labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(rng, classes, images))
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    strength = (2.1 / np.sqrt(dim)) * np.exp(0.2 * rng.standard_normal((images, 1)))
    database = centres[labels] + strength.astype(np.float32) * rng.standard_normal(
        (images, dim), dtype=np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    query = database + np.float32(0.3 / np.sqrt(dim)) * rng.standard_normal(
        (images, dim), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return query, database, labels


def numpy_product():
    """``queries @ chunk.T`` with NumPy (OpenBLAS, the engine's CPU product), reused buffers."""
    buffers: dict[tuple[int, int], np.ndarray] = {}

    def product(queries: np.ndarray, chunk: np.ndarray) -> None:
        shape = (queries.shape[0], chunk.shape[0])
        out = buffers.get(shape)
        if out is None:
            out = buffers[shape] = np.empty(shape, dtype=np.float32)
        np.matmul(queries, chunk.T, out=out)

    return product


def torch_product(device: str):
    """``queries @ chunk.T`` with ``torch.mm`` on ``device`` (float32, no TF32), for tensors
    already there (see :func:`operands`); waits for the GPU to finish."""

    def product(queries: torch.Tensor, chunk: torch.Tensor) -> None:
        with exact_float32():
            torch.mm(queries, chunk.T)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    return product


def operands(query: np.ndarray, database: np.ndarray, device: str | None):
    """The two matrices where the bare product of ``device`` reads them (``None``: NumPy)."""
    if device is None:
        return query, database
    return torch.from_numpy(query).to(device), torch.from_numpy(database).to(device)


def bare_library(device: str | None):
    """The bare product of the engine's device: NumPy on the CPU, torch.mm on a GPU."""
    return numpy_product() if device is None else torch_product(device)


def bare_block(product, queries: np.ndarray, database: np.ndarray, chunk: int) -> float:
    """Seconds for ``queries @ database.T`` in chunks of ``chunk`` rows (scores unused)."""
    start = time.perf_counter()
    for col in range(0, database.shape[0], chunk):
        product(queries, database[col:col + chunk])
    return time.perf_counter() - start


def bare_product(query: np.ndarray, database: np.ndarray, block: int, chunk: int,
                 product) -> float:
    """Seconds for the whole ``query @ database.T`` in the engine's blocks."""
    block = balanced_part_size(query.shape[0], block)
    chunk = balanced_part_size(database.shape[0], chunk)
    return sum(bare_block(product, query[first:first + block], database, chunk)
               for first in range(0, query.shape[0], block))


def interleaved(args: argparse.Namespace, q_file: Path, db_file: Path
                ) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds per side, metrics): engine and bare products, alternating block by block."""
    start = time.perf_counter()
    query_set, database_set = read_embeddings(q_file), read_embeddings(db_file)
    reading = time.perf_counter() - start
    query, database = query_set.embeddings, database_set.embeddings
    ks = check_ks(KS)
    rows = len(query)
    block = balanced_part_size(rows, args.block_size)
    chunk = balanced_part_size(len(database), args.chunk_size)
    # On the CPU, torch is kept out of the interleaving: its idle OpenMP threads spin for a
    # while after each product and would slow the NumPy (OpenBLAS) runs next to them.
    product = bare_library(args.engine_device)
    bare_query, bare_database = operands(query, database, args.engine_device)
    library = "numpy" if args.engine_device is None else f"torch.mm on {args.engine_device}"
    arms = {
        "engine": None,
        f"{library}, engine chunks ({chunk} rows)": chunk,
        f"{library}, all rows at once": len(database),
    }
    seconds = dict.fromkeys(arms, 0.0)
    per_query = {key: np.zeros(rows) for key in metric_keys(ks)}
    blocks = positive_ranks(query, query_set.labels, database, database_set.labels,
                            np.arange(rows), block_size=args.block_size,
                            chunk_size=args.chunk_size, product=args.engine_product,
                            device=args.engine_device)
    for number, first in enumerate(range(0, rows, block)):
        names = list(arms)
        names = names[number % len(names):] + names[:number % len(names)]
        for name in names:
            time.sleep(QUIET_SECONDS)  # let OpenBLAS's worker threads stop spinning
            if arms[name] is None:
                start = time.perf_counter()
                ranks = next(blocks)
                for key, values in per_query_metrics(ranks, ks).items():
                    per_query[key][ranks.query_index] = values
                seconds[name] += time.perf_counter() - start
            else:
                seconds[name] += bare_block(product, bare_query[first:first + block],
                                            bare_database, arms[name])
    start = time.perf_counter()
    metrics = {key: float(np.mean(values)) for key, values in per_query.items()}
    seconds["engine"] += reading + time.perf_counter() - start
    return seconds, metrics


# Runs `raml evaluate` and, at exit, writes the process's peak resident memory (VmHWM of
# /proc/self/status: this process image only; ru_maxrss would include the parent's memory
# that a forked child starts with) to stderr.
_PEAK_WRAPPER = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("PEAK_KIB " + line.split()[1] + "\\n")
atexit.register(_peak)
from raml_cli.cli.app import main
sys.argv = ["raml"] + sys.argv[1:]
main()
"""


def run_cli(query_file: Path, database_file: Path, device: str
            ) -> tuple[float, float, dict]:
    """(seconds, peak resident memory in MiB, JSON) of ``raml evaluate`` in its own process."""
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, "evaluate", str(query_file),
           str(database_file), "--k", ",".join(map(str, KS)), "--json", "--quiet",
           "--device", device]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"raml evaluate failed ({done.returncode}): {done.stderr}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    return seconds, int(peak[-1].split()[1]) / 1024, json.loads(done.stdout)


def backends(query: np.ndarray, database: np.ndarray, block: int, blocks: int) -> dict:
    """Seconds per query block of the exact score product with each library."""
    import faiss

    times: dict[str, float] = {}
    q_t, db_t = torch.from_numpy(query), torch.from_numpy(database)
    starts = range(0, min(len(query), block * blocks), block)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    runs = {
        "torch.mm (MKL)": lambda s: torch.mm(q_t[s:s + block], db_t.T),
        "numpy @ (OpenBLAS)": lambda s: query[s:s + block] @ database.T,
        "faiss IndexFlatIP.search k=1": lambda s: index.search(query[s:s + block], 1),
    }
    for name, fn in runs.items():
        fn(0)  # warm-up
        start = time.perf_counter()
        for s in starts:
            fn(s)
        times[name] = (time.perf_counter() - start) / len(starts)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="6,050 items, 1,132 classes: a quick check")
    parser.add_argument("--images", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=None,
                        help="queries per block (default: the engine's choice)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="database rows per score product (default: the engine's choice)")
    parser.add_argument("--no-cli", action="store_true", help="skip the command's own runs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved passes; the one with the median ratio is reported "
                        "(the ratio of every pass is printed too)")
    parser.add_argument("--cli-runs", type=int, default=2,
                        help="runs of the command, each between two bare products")
    parser.add_argument("--backends", action="store_true",
                        help="also time torch / numpy / faiss score products")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the two .h5 files go (default: a temporary folder)")
    parser.add_argument("--device", default="cpu",
                        help="where the engine runs: cpu (NumPy) or cuda[:N] (torch; timed "
                        "against a bare torch.mm on that GPU)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    if args.small:
        args.images, args.classes = 6050, 1132
    args.engine_product, args.engine_device = score_engine(args.device)
    args.block_size = args.block_size or default_block_size(args.engine_product, args.images)
    args.chunk_size = args.chunk_size or default_chunk_size(args.images, args.engine_product)
    on_cpu = args.engine_device is None

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        query, database, labels = synthetic(args.images, args.classes, args.dim, args.seed)
        names = [f"class_{label}/{i}.jpg" for i, label in enumerate(labels)]
        q_file = write_embeddings(folder / "q.h5", query, labels, names, {"role": "student"})
        db_file = write_embeddings(folder / "db.h5", database, labels, names,
                                   {"role": "teacher"})
        passes = [interleaved(args, q_file, db_file) for _ in range(args.repeat)]
        ratios = [ratio(seconds) for seconds, _ in passes]
        # The pass whose ratio is the median one (the upper one of an even count).
        seconds, metrics = passes[sorted(range(len(passes)), key=ratios.__getitem__)
                                  [len(passes) // 2]]
        check = evaluate_sets(read_embeddings(q_file), read_embeddings(db_file), ks=KS,
                              product=args.engine_product, device=args.engine_device)
        assert rounded(check.metrics) == rounded(metrics), (check.metrics, metrics)
        numpy_metrics = (check.metrics if on_cpu else
                         evaluate_sets(read_embeddings(q_file), read_embeddings(db_file),
                                       ks=KS).metrics)
        cli_runs: list[tuple[float, float, float]] = []  # (command s, bare s, peak MiB)
        if not args.no_cli:
            bare_q, bare_db = operands(query, database, args.engine_device)
            product = bare_library(args.engine_device)
            bare_runs = [bare_product(bare_q, bare_db, args.block_size, args.chunk_size,
                                      product)]
            for _ in range(args.cli_runs):
                seconds_cli, peak, output = run_cli(q_file, db_file, args.device)
                assert output["metrics"] == check.to_json()["metrics"]
                bare_runs.append(bare_product(bare_q, bare_db, args.block_size,
                                              args.chunk_size, product))
                cli_runs.append((seconds_cli, (bare_runs[-2] + bare_runs[-1]) / 2, peak))
            del bare_q, bare_db
        torch_bare = (bare_product(*operands(query, database, "cpu"), args.block_size,
                                   args.chunk_size, torch_product("cpu")) if on_cpu else None)
        timing = backends(query, database, args.block_size, 4) if args.backends else None
    load_after = os.getloadavg()

    bare = {name: value for name, value in seconds.items() if name != "engine"}
    fastest = min(bare.values())
    report = {
        "problem": {"queries": args.images, "database": args.images, "dim": args.dim,
                    "classes": args.classes, "ks": list(KS), "block_size": args.block_size,
                    "chunk_size": args.chunk_size, "engine_product": args.engine_product,
                    "engine_device": args.engine_device or "cpu"},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "scan_threads": scan_threads(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in load_after]},
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "interleaved_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ratio_engine_to_fastest_bare": round(seconds["engine"] / fastest, 3),
        "ratios_of_every_pass": [round(r, 3) for r in ratios],
        "largest_metric_difference_to_numpy": max(abs(metrics[k] - numpy_metrics[k])
                                                  for k in metrics),
    }
    if torch_bare is not None:
        report["torch_bare_engine_blocks_seconds"] = round(torch_bare, 2)
    if cli_runs:
        report["cli"] = [{"seconds": round(c, 2), "bare_around_it": round(bare_s, 2),
                          "ratio": round(c / bare_s, 3), "peak_resident_mib": round(peak, 1)}
                         for c, bare_s, peak in cli_runs]
    if timing is not None:
        report["seconds_per_1024_queries_x_all_rows"] = {k: round(v, 4)
                                                         for k, v in timing.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"problem: {args.images} queries x {args.images} database, {args.dim}-d, "
          f"{args.classes} classes, k={','.join(map(str, KS))}; engine blocks "
          f"{args.block_size} queries x {args.chunk_size} rows ({args.engine_product} on "
          f"{args.engine_device or 'cpu'}); {os.cpu_count()} CPUs, {scan_threads()} scan "
          "threads")
    print(f"load average (1 min) before {load_before[0]:.2f} / after {load_after[0]:.2f}")
    print("metrics: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
    print("interleaved block by block" + (f" (the median of {len(ratios)} passes, whose ratios "
          f"were {', '.join(f'{r:.3f}' for r in ratios)})" if len(ratios) > 1 else "") + ":")
    for name, value in bare.items():
        print(f"  bare float32 product, {name:44s}: {value:8.2f} s")
    print(f"  engine (files read + checked, evaluated){'':28s}: {seconds['engine']:8.2f} s  "
          f"ratio {seconds['engine'] / fastest:.3f} to the fastest bare product")
    if not on_cpu:
        print(f"largest metric difference to the NumPy engine on the CPU: "
              f"{report['largest_metric_difference_to_numpy']:.2e}")
    for c, bare_s, peak in cli_runs:
        print(f"raml evaluate ... --json --device {args.device} in its own process: {c:.2f} s "
              f"wall; bare product (engine blocks) just before/after: {bare_s:.2f} s; ratio "
              f"{c / bare_s:.3f}; peak resident memory {peak:.0f} MiB")
    if torch_bare is not None:
        print(f"bare float32 product with torch (MKL), engine blocks, run alone: "
              f"{torch_bare:.2f} s")
    if timing is not None:
        for name, value in timing.items():
            print(f"score product, {args.block_size} queries x all rows, {name:30s}: "
                  f"{1000 * value:8.1f} ms")


def ratio(seconds: dict[str, float]) -> float:
    """The engine's time over the fastest bare product's, of one interleaved pass."""
    return seconds["engine"] / min(v for k, v in seconds.items() if k != "engine")


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` rounded to 12 decimals, to compare two summation orders."""
    return {k: round(v, 12) for k, v in metrics.items()}


if __name__ == "__main__":
    main()
