"""Training throughput of ``raml train-teacher`` against its limit.

Prints, for one network, resolution and batch shape:

- ``bare``: images/s of the bare step, i.e. forward + triplet loss + backward + AdamW
  step on one fixed batch already on the device (no data loading, no mining, no
  logging): the most the loop could reach;
- ``loop``: images/s of the real training loop on the toy dataset (JPEG decoding,
  random resized crops, DataLoader workers, hardest positives, the NaN check, the
  progress bar, the JSONL log), as the loop measures it over its last epoch
  (negative mining at the start of an epoch is not counted, like validation);
- their ratio (target: >= 0.8), the median over ``--repeats`` back-to-back pairs.

Usage (2-core CPU defaults; on a GPU raise --res and --batch-size)::

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --arch resnet50 --res 224 --batch-size 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def bare_images_per_second(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of forward + loss + backward + step on one fixed batch."""
    from raml_cli.devices import autocast
    from raml_cli.model.batchnorm import calibrate_batchnorm
    from raml_cli.model.network import NetworkConfig, build_network
    from raml_cli.train.losses import TripletLoss
    from raml_cli.train.mining import hardest_positive

    torch.manual_seed(0)
    channels_last = device.type == "cuda"  # as the loop decides
    network = build_network(NetworkConfig(args.arch, whitening=args.dim)).to(device)
    bs, neg = args.batch_size, args.negatives
    images = torch.randn(bs * (1 + neg), 3, args.res, args.res, device=device)
    # The loop's random init gets measured BatchNorm statistics: so does the limit.
    calibrate_batchnorm(network, [images], device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    network.train()
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-4, 1e-6))
    loss_fn = TripletLoss(0.7)
    labels = torch.arange(bs, device=device) // 4

    def step() -> None:
        with autocast(device):
            vectors = network(images).float()
        anchors, negatives = vectors[:bs], vectors[bs:].reshape(bs, neg, -1)
        positive = hardest_positive(anchors.detach(), labels)
        loss = loss_fn(anchors, anchors[positive], negatives)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the loop reads the loss every step too (NaN check)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * images.shape[0] / (time.perf_counter() - start)


def make_toy(args: argparse.Namespace, work: Path) -> Path:
    """A generated toy dataset whose images are a little larger than ``--res``."""
    from raml_cli.data.toy import generate_toy

    data = work / "toy"
    generate_toy(data, seed=0, num_classes=16, images_per_class=24, min_side=args.res + 16,
                 max_side=2 * args.res)
    return data


def loop_images_per_second(args: argparse.Namespace, data: Path, work: Path) -> float:
    """Images/s of the real loop (last of two epochs) on the toy dataset ``data``."""
    from raml_cli.train.teacher import TeacherConfig, train_teacher_result

    config = TeacherConfig(
        dataset=str(data), output=work / "teacher.safetensors", arch=args.arch, dim=args.dim,
        init="none", res=args.res, epochs=2, batch_size=args.batch_size,
        negatives=args.negatives, images_per_epoch=args.steps * args.batch_size,
        pool_size=64, workers=args.workers, device=args.device, seed=0,
    )
    return train_teacher_result(config).images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="anchors per step")
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from raml_cli.devices import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the loop does on the CPU: the limit gets it too
    # On a shared machine the load changes from minute to minute: each repeat measures the
    # limit and the loop back to back, and the median of the per-repeat ratios is reported.
    bare, loop = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_toy(args, Path(tmp))
        # The first measurement in a process is several times slower than the rest
        # (warm-up of the CPU kernels, observed here): one limit run is discarded.
        bare_images_per_second(args, device)
        for _ in range(args.repeats):
            bare.append(bare_images_per_second(args, device))
            loop.append(loop_images_per_second(args, data, Path(tmp)))
    ratios = sorted(lo / b for lo, b in zip(loop, bare, strict=True))
    report = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "arch": args.arch,
        "res": args.res, "images_per_step": args.batch_size * (1 + args.negatives),
        "steps_per_epoch": args.steps, "workers": args.workers,
        "bare_images_per_second": [round(v, 2) for v in bare],
        "loop_images_per_second": [round(v, 2) for v in loop],
        "median_ratio": round(ratios[len(ratios) // 2], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
