"""Query-side forward passes: fused vs unfused, against the FLOPs and the bare matrix product.

For one network (default: resnet50 + GeM + 512-d whitening, the paper's teacher, random
weights: speed does not depend on them), at each resolution (default 112 and 448) and
batch size (default 1 and 32), in one run:

- **unfused, channels-last**: the network as raml ran it before inference preparation
  (eval mode, channels-last weights and inputs);
- **fused, NCHW** and **fused, channels-last**: :func:`prepare_for_inference` (BatchNorm
  folded into the convolutions) in either layout;
- **fused, CL, 1x1 as GEMM**: channels-last with the 1x1 convolutions run as one matrix
  product each (:class:`~raml_cli.model.inference.PointwiseGemm`);
- **fused, CL, packed**: channels-last with every convolution run by oneDNN on weights
  reordered once per input shape (:class:`~raml_cli.model.inference.PackedConv2d`;
  raml's CPU default where torch has the operators; on CUDA the same as channels-last);
- **bare matrix product**: an ``n x n x n`` product (``--matmul-size``, default 2048;
  float32, bf16 on CUDA where the passes run in bf16) with torch on the same device: the
  device's practical peak, against which the networks' achieved GFLOP/s (2 x MACs x
  batch / time) are compared.

The machine is shared and its load swings within seconds, so the variants are measured
**interleaved**: ``--rounds`` rounds, each timing every variant once (``--repeats``
passes, median) in rotating order; a variant's figure is its median over rounds. Load
averages are printed at the start and the end.

Targets the figures are read against (docs/embed.md, "Query speed"): batch-1
student@112 within 1/12 of teacher@448 (the FLOP ratio is 15.1x), fused batch-1 at 112
<= 0.8x the unfused, and achieved GFLOP/s at batch 32 >= 0.7x the bare product's.

Usage:

    .venv/bin/python benchmarks/bench_query.py
    .venv/bin/python benchmarks/bench_query.py --arch efficientnet_lite0 --res 112,224 --json
    .venv/bin/python benchmarks/bench_query.py --device cuda        # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from raml_cli.devices import resolve_device
from raml_cli.model.cost import bare_rate, latency_ms, macs_per_image
from raml_cli.model.inference import prepare_for_inference
from raml_cli.model.network import NetworkConfig, build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--whitening", type=int, default=512)
    parser.add_argument("--res", default="112,448")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    resolutions = [int(v) for v in args.res.split(",")]
    batches = [int(v) for v in args.batch.split(",")]
    print(f"# load average at start: {os.getloadavg()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}", file=sys.stderr)

    torch.manual_seed(0)
    base = build_network(NetworkConfig(args.arch, whitening=args.whitening)).eval()
    variants = {
        "unfused, channels-last": prepare_for_inference(base, device, fold=False,
                                                        channels_last=True, pointwise=False,
                                                        packed=False),
        "fused, NCHW": prepare_for_inference(base, device, channels_last=False,
                                             packed=False),
        "fused, channels-last": prepare_for_inference(base, device, channels_last=True,
                                                      pointwise=False, packed=False),
        "fused, CL, 1x1 as GEMM": prepare_for_inference(base, device, channels_last=True,
                                                        pointwise=True, packed=False),
        "fused, CL, packed": prepare_for_inference(base, device, channels_last=True,
                                                   packed=True),
    }
    default = prepare_for_inference(base, device).inference
    print(f"# raml's default on {device}: {default.as_dict()}", file=sys.stderr)
    folded = default.folded
    macs = {res: macs_per_image(base, res) for res in resolutions}
    cells = [(res, batch) for res in resolutions for batch in batches]
    times: dict[tuple[str, int, int], list[float]] = {}
    bare: list[float] = []
    names = list(variants)
    for round_index in range(args.rounds):
        bare.append(bare_rate(device, args.matmul_size))
        for res, batch in cells:
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                # latency_ms feeds each prepared network in its own layout, after a warm-up
                # pass (oneDNN/cuDNN pick their kernels on the first call).
                ms = latency_ms(variants[name], res, device, batch_size=batch,
                                repeats=args.repeats, warmup=1)
                times.setdefault((name, res, batch), []).append(ms / 1000.0)
        print(f"# round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    bare_gflops = statistics.median(bare)
    rows = []
    for res, batch in cells:
        for name in names:
            seconds = statistics.median(times[(name, res, batch)])
            gflops = 2 * macs[res] * batch / seconds / 1e9
            rows.append({"variant": name, "resolution": res, "batch": batch,
                         "gmacs_per_image": macs[res] / 1e9, "ms": 1000 * seconds,
                         "images_per_s": batch / seconds, "gflops": gflops,
                         "fraction_of_bare": gflops / bare_gflops})
    result = {"architecture": args.arch, "whitening": args.whitening, "device": str(device),
              "threads": torch.get_num_threads(), "folded_batchnorms": folded,
              "bare_matmul_gflops": bare_gflops, "bare_matmul_rounds": bare, "rows": rows,
              "load_average_end": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.arch} + GeM + {args.whitening} on {device} ({torch.get_num_threads()} "
          f"threads), {folded} BatchNorms folded; bare {args.matmul_size}^3 product: "
          f"{bare_gflops:.1f} GFLOP/s (rounds: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"{'variant':<24} {'res':>4} {'batch':>5} {'GMACs':>6} {'ms':>9} {'img/s':>8} "
          f"{'GFLOP/s':>8} {'of bare':>7}")
    for row in rows:
        print(f"{row['variant']:<24} {row['resolution']:>4} {row['batch']:>5} "
              f"{row['gmacs_per_image']:>6.2f} {row['ms']:>9.1f} {row['images_per_s']:>8.1f} "
              f"{row['gflops']:>8.1f} {row['fraction_of_bare']:>7.2f}")
    print(f"# load average at end: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
