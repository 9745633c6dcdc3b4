"""What the spread diagnostic adds to `raml evaluate`, on a synthetic SOP-sized problem.

`raml evaluate q.h5 db.h5` measures the spread of both sides (raml_cli/evaluate/space.py):
the database's mean pairwise and nearest-neighbour cosines (one ``[2000, D] x [D, N]``
product) and the query side's mean pairwise cosine (no product). This times exactly that
work against the bare float32 product ``Q @ DB.T`` of the evaluation (NumPy, the engine's
blocks of 1,024 queries x 4,034 database rows), **interleaved** round by round because
the machine is shared and its load swings.

Usage:

    .venv/bin/python benchmarks/bench_space.py               # 60,502 x 512, 3 rounds
    .venv/bin/python benchmarks/bench_space.py --rows 6050 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from raml_cli.evaluate.space import space_spread


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def bare_product(query: np.ndarray, database: np.ndarray) -> float:
    """Seconds of ``query @ database.T`` in the engine's blocks, scores discarded."""
    out = np.empty((1024, 4034), dtype=np.float32)
    started = time.perf_counter()
    for q in range(0, len(query), 1024):
        block = query[q:q + 1024]
        for c in range(0, len(database), 4034):
            chunk = database[c:c + 4034]
            np.matmul(block, chunk.T, out=out[:len(block), :len(chunk)])
    return time.perf_counter() - started


def spread_cost(query: np.ndarray, database: np.ndarray) -> float:
    """Seconds of what `raml evaluate` adds: both sides' spread (the query's without nn)."""
    started = time.perf_counter()
    space_spread(database)
    space_spread(query, neighbours=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    database = unit_rows(rng, args.rows, args.dim)
    query = database + 0.3 * unit_rows(rng, args.rows, args.dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    print(f"{args.rows} x {args.dim}; load average at start {os.getloadavg()[0]:.2f}")
    bare_total = spread_total = 0.0
    for number in range(args.rounds):
        bare, spread = bare_product(query, database), spread_cost(query, database)
        bare_total, spread_total = bare_total + bare, spread_total + spread
        print(f"round {number + 1}: bare product {bare:.2f} s, spread {spread:.3f} s "
              f"({100 * spread / bare:.2f}%)", flush=True)
    print(f"total: bare product {bare_total:.2f} s, spread {spread_total:.3f} s = "
          f"{100 * spread_total / bare_total:.2f}% of the bare product; load average at end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
