#!/usr/bin/env bash
# The README's GPU figures in one command on a borrowed GPU machine, ending within 9 minutes:
#
#   make gpu-bundle                                   # once, on a machine with network
#   scripts/gpu_evidence.sh OUT                       # on the GPU machine (the bundle travels with the checkout)
#   scripts/gpu_evidence.sh --rehearse OUT            # the same on a CPU with tiny sizes (make gpu-rehearsal)
#
# 1. installs what the machine lacks from gpu-bundle/wheels with pip alone (--no-index, into a folder
#    on PYTHONPATH; the machine's own packages are never replaced): scripts/install_bundle.py;
# 2. prints the GPU, driver, torch and CUDA;
# 3. runs `python -m visiontrain bench evidence`: the fast CIFAR-10 recipe over 10 seeds, resnet9 over
#    3, the trainer against the bare loop (ResNet-9, eager, compiled, CUDA graphs), the ResNet-50 step
#    (eager, compiled), ResNet-50 fed by FFCV, and ConvNeXt-T, ViT-S/16 and EfficientNet-B0 steps,
#    each part killed at its own budget; OUT/summary.md, OUT/results.json and OUT/log.txt are
#    rewritten after every part (docs/benchmarks.md, "GPU evidence").
# Environment: PYTHON (default python3), GPU_BUNDLE (default ./gpu-bundle), TMPDIR.
set -uo pipefail
started=$(date +%s)
REHEARSE=()
if [[ ${1:-} == --rehearse ]]; then REHEARSE=(--rehearse); shift; fi
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: scripts/gpu_evidence.sh [--rehearse] OUT" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "$1")  # absolute: the measurement runs from the checkout
BUNDLE=$(realpath -m "${GPU_BUNDLE:-$ROOT/gpu-bundle}")
PY=${PYTHON:-python3}
if [[ ! -d $BUNDLE/wheels ]]; then
    echo "error: $BUNDLE/wheels not found: build the bundle with make gpu-bundle (GPU_BUNDLE names another)" >&2
    exit 2
fi
mkdir -p "$OUT"
SITE=${TMPDIR:-/tmp}/visiontrain-bundle-site
rm -rf "$SITE"
if ! "$PY" "$ROOT/scripts/install_bundle.py" "$BUNDLE/wheels" "$SITE" 2>&1 | tee "$OUT/install.txt"; then
    echo "error: installing the bundle failed (see $OUT/install.txt)" >&2
    exit 1
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "no nvidia-smi: no GPU"
fi
if ! timeout 60 "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
        "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'; then
    echo "error: $PY cannot import torch" >&2
    exit 1
fi
cd "$ROOT" || exit 2
exec "$PY" -m visiontrain bench evidence "$OUT" --bundle "$BUNDLE" --started "$started" ${REHEARSE[@]+"${REHEARSE[@]}"}
