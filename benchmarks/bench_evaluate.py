"""`raml evaluate` against the bare float32 matrix product, on a synthetic SOP-sized problem.

The problem (default): 60,502 queries = 60,502 database items (the SOP test split's size),
512-d unit vectors, 11,316 classes of 2-12 images. Each class has a random centre; an
image is its centre plus isotropic noise whose strength varies per image, normalised.
The noise level gives SOP-like numbers for a good model (recall@1 ~ 0.83, trapezoid mAP
~ 0.58; the paper's SOP: 81 / 60): the work of the exact evaluation grows with how deep
the positives sit in the rankings, so an easier or harder problem would flatter or
punish it. The
query file is a perturbed copy of the database file with the same paths (a student
against its teacher), so each query is excluded from its own ranking.

Printed side by side, in one run, on the same machine:

- **bare product**: ``Q @ DB.T`` in float32, nothing done with the scores, with NumPy
  (OpenBLAS; what the engine uses) and with torch (MKL), each in the engine's blocks
  (``--block-size`` queries x ``--chunk-size`` database rows, output buffer reused) and
  in blocks of 1,024 queries x all rows (the whole 60,502 x 60,502 matrix would need
  14.6 GB, so "one go" is not possible); the fastest of these is the reference;
- **engine**: ``evaluate_sets(read_embeddings(q), read_embeddings(db))`` with
  ``ks=(1, 10, 100, 1000)``, file reading included;
- **raml evaluate**: the command in its own process (``raml evaluate q.h5 db.h5
  --k 1,10,100,1000 --json --quiet``): wall time (interpreter start and imports included)
  and peak resident memory of that process (``VmHWM`` from ``/proc/self/status`` at exit:
  everything the process held, BLAS buffers included; tracemalloc would see only
  Python's and NumPy's allocations);
- **exact-search backends** (``--backends``): the time of the score product for a few
  query blocks with torch (MKL), NumPy (OpenBLAS) and faiss-cpu (``IndexFlatIP.search``
  with k=1, its cheapest exact search).

The engine's own bare product (same library, same blocks) is timed right before and
after the engine; with ``--repeat N`` every timing is taken N times and the minimum
reported (the least disturbed run: other people share this machine). Load averages are
printed.

Usage:

    .venv/bin/python benchmarks/bench_evaluate.py                 # the full SOP-sized problem
    .venv/bin/python benchmarks/bench_evaluate.py --small         # 6,050 items, seconds
    .venv/bin/python benchmarks/bench_evaluate.py --no-cli --backends --json
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

from raml_cli.evaluate import evaluate_sets
from raml_cli.evaluate.neighbours import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PRODUCT,
    SCORE_PRODUCTS,
    balanced_part_size,
)
from raml_cli.store import read_embeddings, write_embeddings

KS = (1, 10, 100, 1000)


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


def bare_product(query: np.ndarray, database: np.ndarray, block: int, chunk: int,
                 library: str) -> float:
    """Seconds for every block of ``query @ database.T`` (nothing else done with it).

    Blocks are balanced as in the engine (no small last block)."""
    product = SCORE_PRODUCTS[library]()  # output buffers reused, as in the engine
    block = balanced_part_size(query.shape[0], block)
    chunk = balanced_part_size(database.shape[0], chunk)
    start = time.perf_counter()
    for first in range(0, query.shape[0], block):
        queries = np.ascontiguousarray(query[first:first + block])
        for col in range(0, database.shape[0], chunk):
            product(queries, database[col:col + chunk])
    return time.perf_counter() - start


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


def run_cli(query_file: Path, database_file: Path) -> tuple[float, float, dict]:
    """(seconds, peak resident memory in MiB, JSON) of ``raml evaluate`` in its own process."""
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, "evaluate", str(query_file),
           str(database_file), "--k", ",".join(map(str, KS)), "--json", "--quiet"]
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


def measure(args: argparse.Namespace, query: np.ndarray, database: np.ndarray,
            q_file: Path, db_file: Path) -> tuple[dict[str, list[float]], object, object]:
    """Every timing, ``args.repeat`` rounds; each round runs the engine between two runs of
    its own bare product, then the command, then the other bare products."""
    block, chunk, library = args.block_size, args.chunk_size, DEFAULT_PRODUCT
    configs = {f"{library}, engine blocks ({block} x {chunk})": (library, block, chunk)}
    for other in SCORE_PRODUCTS:
        configs.setdefault(f"{other}, engine blocks ({block} x {chunk})", (other, block, chunk))
        configs[f"{other}, {1024} queries x all rows"] = (other, 1024, len(database))
    times: dict[str, list[float]] = {name: [] for name in [*configs, "engine", "cli"]}
    own = next(iter(configs))
    result = cli = None
    for _ in range(args.repeat):
        times[own].append(bare_product(query, database, block, chunk, library))
        start = time.perf_counter()
        result = evaluate_sets(read_embeddings(q_file), read_embeddings(db_file), ks=KS,
                               block_size=block, chunk_size=chunk)
        times["engine"].append(time.perf_counter() - start)
        times[own].append(bare_product(query, database, block, chunk, library))
        if not args.no_cli:
            cli = run_cli(q_file, db_file)
            times["cli"].append(cli[0])
            assert cli[2]["metrics"] == result.to_json()["metrics"]
        for name, (lib, b, c) in list(configs.items())[1:]:
            times[name].append(bare_product(query, database, b, c, lib))
    return times, result, cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="6,050 items, 1,132 classes: a quick check")
    parser.add_argument("--images", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds of every timing; the minimum is reported (default: 1, "
                        "3 with --small)")
    parser.add_argument("--no-cli", action="store_true", help="skip the subprocess run")
    parser.add_argument("--backends", action="store_true",
                        help="also time torch / numpy / faiss score products")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the two .h5 files go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    if args.small:
        args.images, args.classes = 6050, 1132
    if args.repeat is None:
        args.repeat = 3 if args.small else 1

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        query, database, labels = synthetic(args.images, args.classes, args.dim, args.seed)
        names = [f"class_{label}/{i}.jpg" for i, label in enumerate(labels)]
        q_file = write_embeddings(folder / "q.h5", query, labels, names, {"role": "student"})
        db_file = write_embeddings(folder / "db.h5", database, labels, names,
                                   {"role": "teacher"})
        times, result, cli = measure(args, query, database, q_file, db_file)
        timing = backends(query, database, args.block_size, 4) if args.backends else None
    load_after = os.getloadavg()

    best = {name: min(values) for name, values in times.items() if values}
    bare = {name: best[name] for name in best if name not in ("engine", "cli")}
    fastest = min(bare.values())
    report = {
        "problem": {"queries": args.images, "database": args.images, "dim": args.dim,
                    "classes": args.classes, "ks": list(KS), "block_size": args.block_size,
                    "chunk_size": args.chunk_size, "engine_product": DEFAULT_PRODUCT,
                    "repeat": args.repeat},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in load_after]},
        "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
        "seconds_min": {k: round(v, 2) for k, v in best.items()},
        "seconds_all_runs": {k: [round(x, 2) for x in v] for k, v in times.items() if v},
        "ratio_engine_to_fastest_bare": round(best["engine"] / fastest, 3),
    }
    if cli is not None:
        report["ratio_cli_to_fastest_bare"] = round(best["cli"] / fastest, 3)
        report["cli_peak_rss_mib"] = round(cli[1], 1)
    if timing is not None:
        report["seconds_per_block_of_queries"] = {k: round(v, 4) for k, v in timing.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"problem: {args.images} queries x {args.images} database, {args.dim}-d, "
          f"{args.classes} classes, k={','.join(map(str, KS))}; engine blocks "
          f"{args.block_size} queries x {args.chunk_size} rows ({DEFAULT_PRODUCT}); "
          f"{os.cpu_count()} CPUs; minimum of {args.repeat} round(s)")
    print(f"load average (1 min) before {load_before[0]:.2f} / after {load_after[0]:.2f}")
    print("metrics: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in result.metrics.items()))
    for name, seconds in bare.items():
        runs = ", ".join(f"{x:.2f}" for x in times[name])
        print(f"bare float32 product, {name:38s}: {seconds:8.2f} s  (runs: {runs})")
    print(f"engine: read both files + evaluate_sets       : {best['engine']:8.2f} s  ratio "
          f"{best['engine'] / fastest:.3f} to the fastest bare product")
    if cli is not None:
        print(f"raml evaluate ... --json (own process, wall)  : {best['cli']:8.2f} s  ratio "
              f"{best['cli'] / fastest:.3f}, peak resident memory {cli[1]:.0f} MiB")
    if timing is not None:
        for name, seconds in timing.items():
            print(f"score product, {args.block_size} queries x all rows, {name:30s}: "
                  f"{1000 * seconds:8.1f} ms")


if __name__ == "__main__":
    main()
