"""Speed and recall of `raml index` / `raml search` on a synthetic database (prints numbers).

    python benchmarks/bench_search.py --rows 1000000 --dim 512 --memory 2GB \
        --kinds auto,flat,ivf,ivfpq --work /tmp/bench_search
    python benchmarks/bench_search.py --e2e-only

The database: clustered unit rows with a low intrinsic dimension, like trained embeddings
(2,000 cluster centres in a 64-d latent space, a point = centre + noise, mapped to D by one
random linear map, plus a little isotropic noise, L2-normalised), generated in chunks into
an .h5 by raml's own writer. 1,000 held-out queries come from the same distribution.

For each kind: `raml index` (a subprocess, its --json), then the index is loaded and
searched: recall@10 against exact search, ms per query at batch 1 and batch 100, next to
the bare matrix product `q @ X.T` + top-10 over the rows in memory.

`--e2e`: the end-to-end latency of one query image (decode + encode + search, batch 1) with
resnet50 + GeM + 512 as a student at 112 px and as a teacher at 448 px.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, dim: int, seed: int, chunk: int = 50_000) -> None:
    from raml_cli.store import EmbeddingWriter

    writer = EmbeddingWriter(path, dim=dim, attrs={"role": "teacher", "dataset": "synthetic",
                                                   "model_sha256": "synthetic"},
                             chunk_rows=4096)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        writer.append(sample(n, dim, seed, start), np.arange(start, start + n) % 2000,
                      [f"img{i:07d}.jpg" for i in range(start, start + n)])
    writer.finalize()


def sample(n: int, dim: int, seed: int, offset: int) -> np.ndarray:
    base = np.random.default_rng(seed)
    centres = base.normal(size=(2000, 64)).astype(np.float32)
    mapping = base.normal(size=(64, dim)).astype(np.float32) / 8.0
    rng = np.random.default_rng([seed, offset])
    latent = centres[rng.integers(0, 2000, n)] + 0.6 * rng.normal(size=(n, 64))
    x = latent.astype(np.float32) @ mapping + 0.05 * rng.normal(size=(n, dim)).astype(
        np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ database.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def ms_per_query(fn, queries: np.ndarray, batch: int, limit: int) -> float:
    chunks = [queries[i:i + batch] for i in range(0, min(limit, len(queries)), batch)]
    fn(chunks[0])  # warm-up
    started = time.perf_counter()
    for chunk in chunks:
        fn(chunk)
    return 1000 * (time.perf_counter() - started) / sum(len(c) for c in chunks)


def bench_kinds(args: argparse.Namespace) -> None:
    from raml_cli.index import read_index_file
    from raml_cli.index.build import recall_at_k
    from raml_cli.store import read_embeddings

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"db_{args.rows}x{args.dim}.h5"
    if not db.exists():
        t0 = time.perf_counter()
        generate(db, args.rows, args.dim, args.seed)
        print(f"generated {db} in {time.perf_counter() - t0:.1f} s", flush=True)
    queries = sample(1000, args.dim, args.seed, 10**9)
    X = read_embeddings(db).embeddings
    exact = exact_top(queries, X, 10)
    bare1 = ms_per_query(lambda q: exact_top(q, X, 10), queries, 1, 100)
    bare100 = ms_per_query(lambda q: exact_top(q, X, 10), queries, 100, 500)
    print(f"bare matrix product + top-10 (numpy): {bare1:.2f} ms/query at batch 1, "
          f"{bare100:.2f} at batch 100", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kind in args.kinds.split(","):
        out = work / f"{kind}.index"
        memory = args.memory if kind == "auto" else args.memory_explicit
        cmd = [sys.executable, "-m", "raml_cli", "index", str(db), "-o", str(out), "--kind",
               kind, "--memory", memory, "--json", "--quiet"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{kind}: {done.stderr.strip()}", flush=True)
            continue
        built = json.loads(done.stdout)
        loaded = read_index_file(out)

        def search(q, loaded=loaded):
            return loaded.index.search(q, 10)

        recall = recall_at_k(search(queries)[1], exact)
        one = ms_per_query(search, queries, 1, 300)
        hundred = ms_per_query(search, queries, 100, 1000)
        print(json.dumps({"kind": kind, "factory": built["factory"],
                          "search_params": built["search_params"],
                          "build_s": built["build_seconds"],
                          "size_mb": round(built["size_bytes"] / 1e6, 1),
                          "self_recall@10": round(built["self_recall@10"], 4),
                          "heldout_recall@10": round(recall, 4),
                          "ms_per_query_batch1": round(one, 3),
                          "ms_per_query_batch100": round(hundred, 3),
                          "reason": built["reason"]}), flush=True)


def bench_e2e(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    from raml_cli.data.dataset import Sample
    from raml_cli.embed import embed_in_memory
    from raml_cli.model.network import NetworkConfig, build_network

    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (500, 375, 3), dtype=np.uint8)).save(
        work / "query.jpg", quality=90)
    network = build_network(NetworkConfig("resnet50", whitening=512)).eval()
    import faiss

    index = faiss.IndexFlatIP(512)
    index.add(sample(10_000, 512, 0, 0))
    for name, res in (("student", 112), ("teacher", 448)):
        def one(res=res):
            v = embed_in_memory(network, [Sample("query.jpg", -1)], work, res, batch_size=1)
            index.search(v, 10)
        one()
        started = time.perf_counter()
        for _ in range(args.e2e_repeats):
            one()
        ms = 1000 * (time.perf_counter() - started) / args.e2e_repeats
        print(f"end-to-end {name} @ {res}px (decode + resnet50-GeM-512 + search): "
              f"{ms:.1f} ms/query", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--memory", default="2GB", help="budget of the auto index")
    parser.add_argument("--memory-explicit", default="8GB", help="budget of the other kinds")
    parser.add_argument("--kinds", default="auto,flat,ivf,ivfpq,hnsw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/bench_search")
    parser.add_argument("--e2e", action="store_true")
    parser.add_argument("--e2e-only", action="store_true")
    parser.add_argument("--e2e-repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if not args.e2e_only:
        bench_kinds(args)
    if args.e2e or args.e2e_only:
        bench_e2e(args)


if __name__ == "__main__":
    main()
