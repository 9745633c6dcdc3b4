#!/usr/bin/env bash
# One GPU run, ready to go: on a machine with an NVIDIA GPU, install raml, run the tests
# marked `cuda`, and print the benchmark numbers, in under 8 minutes on one H200-class GPU.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # OUT_DIR (default ./gpu-results) gets the logs
#
# What it runs, each step under its own time limit so the whole stays inside the budget:
#   1. install: `pip install -e .` where the package index is reachable; offline it puts the
#      checkout on PYTHONPATH and, where a folder of wheels is given (RAML_WHEELS, default
#      .whl, e.g. faiss-cpu for a machine that lacks it), installs those without an index;
#   2. pytest -m cuda: the GPU tests (BatchNorm folding on CUDA, evaluation on the GPU,
#      embedding and training steps on CUDA);
#   3. benchmarks/bench_query.py --device cuda: resnet50 + GeM + 512 forward passes,
#      fused/unfused, bf16, batch 1 and 32 at 112/224/448, against the bare bf16 product;
#   4. benchmarks/bench_embed.py --device cuda: `raml embed` against the bare forward at
#      112/224/448 (bf16 autocast);
#   5. benchmarks/bench_train.py --device cuda: a training step of the loop against the bare
#      step (resnet50, 224 px);
#   6. benchmarks/bench_evaluate.py --device cuda: the exact evaluation at SOP size on the
#      GPU against a bare torch.mm of the same blocks;
#   7. raml info --device cuda --batch 1,32: the command's own latency table.
# Every step's output is printed and kept in OUT_DIR/<step>.txt; a failed step is reported
# and the next one still runs; the exit status is non-zero if any step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-gpu-results}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TIMM_OFFLINE=1

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        2>/dev/null; then
    echo "gpu.sh: torch sees no CUDA GPU here (torch.cuda.is_available() is False); run it" \
         "on a machine with an NVIDIA GPU and a CUDA build of torch." >&2
    exit 2
fi

started=$(date +%s)
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s, $(($(date +%s) - started))s into the run) ==="
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "=== $name FAILED (exit $status) ==="
        failed+=("$name")
    fi
}

# 1. install
WHEELS="${RAML_WHEELS:-.whl}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/raml-site \
        --upgrade "$WHEELS"/*.whl && export PYTHONPATH="/tmp/raml-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! timeout 120 "$PYTHON" -m pip install -q -e . 2>"$OUT_DIR/install.txt"; then
    echo "pip install -e . failed (offline?); using the checkout on PYTHONPATH" \
         "(see $OUT_DIR/install.txt)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'EOF' | tee "$OUT_DIR/machine.txt"
import platform, subprocess, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA",
      torch.version.cuda, "|", torch.cuda.get_device_name(0))
for name in ("timm", "h5py", "faiss", "numpy", "onnxruntime"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError:
        print(f"{name}: not installed")
print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
EOF

# 2. the GPU tests
step cuda-tests 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests
# 3. forward passes against the bare product
step query 90 "$PYTHON" benchmarks/bench_query.py --device cuda --res 112,224,448 \
    --batch 1,32 --rounds 3 --repeats 20
# 4. raml embed against the bare forward
step embed 90 "$PYTHON" benchmarks/bench_embed.py --device cuda --res 112,224,448 \
    --batch-size 64 --images 512 --repeats 2
# 5. a training step against the bare step
step train 60 "$PYTHON" benchmarks/bench_train.py --device cuda --arch resnet50 --res 224 \
    --batch-size 16 --steps 20 --repeats 2
# 6. the exact evaluation at SOP size on the GPU
step evaluate 120 "$PYTHON" benchmarks/bench_evaluate.py --device cuda --no-cli
# 7. raml info's latency table (the model file stays out of OUT_DIR: 100 MB)
MODEL="${TMPDIR:-/tmp}/raml-gpu-resnet50.safetensors"
step info 45 bash -c "$PYTHON - <<'EOF'
import torch
from raml_cli.model.files import save_model
from raml_cli.model.network import NetworkConfig, build_network
torch.manual_seed(0)
save_model('$MODEL', build_network(NetworkConfig('resnet50')),
           resolution=448, role='teacher', dataset='synthetic', config={})
EOF
$PYTHON -m raml_cli info $MODEL --res 112,224,448 --batch 1,32 \
    --device cuda --repeats 20"

echo
echo "gpu.sh: done in $(($(date +%s) - started)) s; logs in $OUT_DIR/"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu.sh: failed steps: ${failed[*]}" >&2
    exit 1
fi
