"""onnxruntime against torch eager for query encoding on the CPU (prints numbers).

    python benchmarks/bench_onnx.py                      # resnet50 and efficientnet_lite0
    python benchmarks/bench_onnx.py --archs resnet18 --res 112 --threads 2 --rounds 15
    python benchmarks/bench_onnx.py --compare-exporters

For each architecture (GeM pooling, 512-d whitening, random weights: the speed does not
depend on them), at ``--res`` px with ``--threads`` threads for both runtimes:

- torch eager: the network as ``raml search`` runs it
  (:func:`raml_cli.model.inference.prepare_for_inference`: BatchNorm folded, 1x1
  convolutions as matrix products, channels-last; inference mode), ms per batch of 1 and
  per image in a batch of ``--batch``;
- onnxruntime: the network exported at that fixed batch size
  (:func:`raml_cli.export.to_onnx`, a session of :mod:`raml_cli.export.runtime`);
- the in-memory export (:func:`raml_cli.export.encoder_for_network`: conversion, session,
  check against torch), median of ``--export-repeats``: about what the first
  ``raml search`` on onnxruntime pays for a ``.safetensors`` model (it caches the export;
  later ones open the file), or every call when the cache folder cannot be written;
- the break-even query count: queries at batch 1 after which that export has paid for
  itself, ``export_ms / (torch_ms - onnxruntime_ms)``.

``--compare-exporters``: instead, for each architecture, the export time and onnxruntime's
batch-1 latency of torch's two ONNX exporters: the dynamo one raml uses
(:func:`raml_cli.export.to_onnx`) and the legacy TorchScript one (``dynamo=False``).

On a shared machine the load changes from second to second, so the two runtimes are timed
in alternating rounds (each round: ``--per-round`` passes of one, then of the other) and
the median of the round medians is printed, with the load average before and after.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time


def _median_ms(run, passes: int) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compare(network, res: int, batch: int, threads: int, rounds: int,
            per_round: int) -> tuple[float, float]:
    """Median ms per batch of torch eager and of onnxruntime, timed in alternating rounds."""
    import torch

    from raml_cli.export.convert import INPUT_NAME, example_inputs, model_bytes, to_onnx
    from raml_cli.export.runtime import create_session
    from raml_cli.model.inference import prepare_for_inference

    session = create_session(model_bytes(to_onnx(network, res, batch_size=batch)), threads)
    feed = {INPUT_NAME: example_inputs(res, "float32-nchw", batch)}
    prepared = prepare_for_inference(network, "cpu")  # a copy; the export used the original
    x = torch.from_numpy(feed[INPUT_NAME])
    if prepared.inference.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch_ms, ort_ms = [], []
    with torch.inference_mode():
        for _ in range(3):  # warm-up: oneDNN primitives, onnxruntime's arena
            prepared(x)
            session.run(None, feed)
        for _ in range(rounds):
            # A pause at each switch: onnxruntime's idle threads spin for a moment after a
            # run, and torch's linger too; neither may time the other's leftovers.
            time.sleep(0.1)
            torch_ms.append(_median_ms(lambda: prepared(x), per_round))
            time.sleep(0.1)
            ort_ms.append(_median_ms(lambda: session.run(None, feed), per_round))
    return statistics.median(torch_ms), statistics.median(ort_ms)


def compare_exporters(network, res: int, threads: int, rounds: int, per_round: int) -> None:
    """Print export seconds and onnxruntime batch-1 ms of the dynamo and TorchScript
    exporters (median of round medians, one graph after the other)."""
    import io
    import warnings

    import torch

    from raml_cli.export.convert import (
        INPUT_NAME,
        OPSET,
        OUTPUT_NAME,
        example_inputs,
        model_bytes,
        to_onnx,
    )
    from raml_cli.export.runtime import create_session

    feed = {INPUT_NAME: example_inputs(res, "float32-nchw", 1)}
    started = time.perf_counter()
    dynamo = model_bytes(to_onnx(network, res))
    dynamo_s = time.perf_counter() - started
    buffer = io.BytesIO()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.from_numpy(feed[INPUT_NAME]),), buffer, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET)
    legacy_s = time.perf_counter() - started
    # One session alive at a time: the idle threads of another session's pool spin for a
    # while after each run and would slow this one down.
    for name, graph, seconds in (("dynamo", dynamo, dynamo_s),
                                 ("torchscript", buffer.getvalue(), legacy_s)):
        run = functools.partial(create_session(graph, threads).run, None, feed)
        run()
        ms = statistics.median(_median_ms(run, per_round) for _ in range(rounds))
        del run
        print(f"{network.config.architecture} | {name} | export {seconds:.2f} s | "
              f"onnxruntime b1 {ms:.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet50,efficientnet_lite0")
    parser.add_argument("--res", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--export-repeats", type=int, default=3)
    parser.add_argument("--compare-exporters", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from raml_cli.export import encoder_for_network, to_onnx
    from raml_cli.model.network import NetworkConfig, build_network

    print(f"# {args.res} px, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {_load()}")
    if args.compare_exporters:
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            network = build_network(NetworkConfig(arch, pooling="gem", whitening=512)).eval()
            to_onnx(network, args.res)  # the exporter's own first-use cost is not its speed
            compare_exporters(network, args.res, args.threads, args.rounds, args.per_round)
        print(f"# load average after: {_load()}")
        return
    print(f"arch | torch b1 ms | onnxruntime b1 ms | speed-up | torch b{args.batch} ms/img | "
          f"onnxruntime b{args.batch} ms/img | in-memory export s | break-even queries")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        network = build_network(NetworkConfig(arch, pooling="gem", whitening=512)).eval()
        exports = []
        for _ in range(args.export_repeats):
            started = time.perf_counter()
            encoder_for_network(network, args.res, threads=args.threads)
            exports.append(time.perf_counter() - started)
        export_s = statistics.median(exports)
        torch_1, ort_1 = compare(network, args.res, 1, args.threads, args.rounds,
                                 args.per_round)
        torch_b, ort_b = compare(network, args.res, args.batch, args.threads,
                                 max(3, args.rounds // 3), 2)
        saving = torch_1 - ort_1
        even = f"{1000 * export_s / saving:.0f}" if saving > 0 else "never"
        print(f"{arch} | {torch_1:.2f} | {ort_1:.2f} | {torch_1 / ort_1:.2f}x | "
              f"{torch_b / args.batch:.2f} | {ort_b / args.batch:.2f} | {export_s:.2f} | "
              f"{even}", flush=True)
    print(f"# load average after: {_load()}")


if __name__ == "__main__":
    main()
