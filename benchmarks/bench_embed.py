"""`raml embed` throughput against the bare forward pass of the same network.

For each resolution, in one run and with the same network, batch size and device:

- **bare forward**: images/s of ``network(x)`` on random tensors already in memory, the
  network prepared as ``raml embed`` prepares it (BatchNorm folded, channels-last,
  inference mode; bf16 autocast on CUDA): the limit;
- **raml embed**: images/s of the real extraction engine (``embed_dataset``, what the
  command runs) on 500x375 JPEGs it generates: decoding, resizing, batching, forward,
  writing the HDF5 file; the model load and one warm-up batch are outside the clock
  (the bare forward has its warm-up batch too).

The ratio embed / bare says how much the pipeline around the network costs. On a shared
machine the load changes during a run, so the two are measured alternately
``--repeats`` times and the best of each side counts (as ``timeit`` takes the minimum);
every run is printed too. ``paired`` is the median over repeats of embed / bare of the
runs made back to back, the figure least disturbed by other processes.

Usage:

    .venv/bin/python benchmarks/bench_embed.py                      # resnet50, 112/224/448
    .venv/bin/python benchmarks/bench_embed.py --res 224 --images 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raml_cli.data.dataset import Sample
from raml_cli.devices import autocast, resolve_device
from raml_cli.embed import default_workers, embed_dataset
from raml_cli.model.files import load_model, save_model
from raml_cli.model.inference import prepare_for_inference
from raml_cli.model.network import NetworkConfig, build_network


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Sample]:
    """``count`` 500x375 JPEGs (quality 90) with smooth structure plus noise, like photos."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    samples = []
    for i in range(count):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)]
        base = 127 + 80 * np.sin(fx * xx + phase)[..., None] * np.cos(fy * yy)[..., None]
        colour = rng.uniform(0.5, 1.0, 3)[None, None, :]
        noise = rng.normal(0, 12, (375, 500, 3))
        array = np.clip(base * colour + noise, 0, 255).astype(np.uint8)
        name = f"{i % 10:03d}/img{i:05d}.jpg"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(folder / name, quality=90)
        samples.append(Sample(name, i % 10))
    return samples


def bare_forward(network: torch.nn.Module, res: int, batch_size: int, images: int,
                 device: torch.device) -> float:
    """Images/s of the network alone on in-memory batches (after one warm-up batch)."""
    x = torch.randn(batch_size, 3, res, res, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    batches = max(1, images // batch_size)
    with torch.inference_mode(), autocast(device):
        network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return batches * batch_size / (time.perf_counter() - start)


def decode_only(folder: Path, samples: list[Sample], res: int) -> float:
    """Images/s of decoding + the evaluation transform alone, in this process."""
    from raml_cli.data.images import load_rgb
    from raml_cli.data.transforms import eval_transform

    transform = eval_transform(res, (0.5,) * 3, (0.5,) * 3)
    start = time.perf_counter()
    for sample in samples:
        transform(load_rgb(folder / sample.path, transform.min_size))
    return len(samples) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--res", default="112,224,448", help="comma-separated resolutions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=0,
                        help="images per resolution (default: scaled to the resolution)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating bare/embed measurements; the best of each counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    resolutions = [int(r) for r in args.res.split(",")]
    workers = default_workers(device) if args.workers is None else args.workers
    scale = 8 if device.type == "cuda" else 1

    def count(res: int) -> int:
        if args.images:
            return args.images
        return max(args.batch_size, scale * {112: 192, 224: 64, 448: 32}.get(res, 64))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        samples_all = make_jpegs(folder, max(count(r) for r in resolutions))
        torch.manual_seed(0)
        model_path = save_model(Path(tmp) / "model.safetensors",
                                build_network(NetworkConfig(args.arch, whitening=512)),
                                resolution=224, role="teacher", dataset="bench", config={})
        network, _ = load_model(model_path, device)
        # The network exactly as raml embed runs it (BatchNorm folded, channels-last).
        network = prepare_for_inference(network, device, copy=False)
        for res in resolutions:
            n = count(res)
            samples = samples_all[:n]
            # One untimed batch first, as bare_forward does: the first pass at a new input
            # shape sets up oneDNN / cuDNN kernels, a one-off cost a real run amortises.
            embed_dataset(model_path, Path(tmp) / f"warm{res}.h5", samples[:args.batch_size],
                          folder, dataset="bench", split="all", res=res,
                          batch_size=args.batch_size, workers=workers, device=str(device))
            bare_runs, embed_runs = [], []
            for rep in range(args.repeats):  # alternate, so load changes hit both sides
                bare_runs.append(bare_forward(network, res, args.batch_size, n, device))
                result = embed_dataset(model_path, Path(tmp) / f"out{res}-{rep}.h5", samples,
                                       folder, dataset="bench", split="all", res=res,
                                       batch_size=args.batch_size, workers=workers,
                                       device=str(device))
                embed_runs.append(result.images_per_second)
            bare, embed = max(bare_runs), max(embed_runs)
            rows.append({
                "resolution": res, "images": n, "batch_size": args.batch_size,
                "workers": workers, "bare_images_per_s": bare, "embed_images_per_s": embed,
                "ratio": embed / bare, "bare_runs": bare_runs, "embed_runs": embed_runs,
                "paired_ratio_median": float(np.median(np.divide(embed_runs, bare_runs))),
                "decode_images_per_s": decode_only(folder, samples[:64], res),
            })
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    report = {"arch": args.arch, "device": str(device), "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average": list(load), "rows": rows}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.arch} on {report.get('gpu', device)} ({os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} torch threads, load average "
          f"{', '.join(f'{v:.1f}' for v in load)}), batch {args.batch_size}, "
          f"{workers} workers")
    print(f"{'res':>5} {'images':>7} {'bare img/s':>11} {'embed img/s':>12} {'ratio':>6} "
          f"{'paired':>7} {'decode img/s':>13}  runs (bare | embed)")
    for r in rows:
        runs = (" ".join(f"{v:.1f}" for v in r["bare_runs"]) + " | "
                + " ".join(f"{v:.1f}" for v in r["embed_runs"]))
        print(f"{r['resolution']:>5} {r['images']:>7} {r['bare_images_per_s']:>11.1f} "
              f"{r['embed_images_per_s']:>12.1f} {r['ratio']:>6.2f} "
              f"{r['paired_ratio_median']:>7.2f} {r['decode_images_per_s']:>13.1f}  {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
