#!/usr/bin/env bash
# The main job in miniature, offline on CPU: generate the shapes dataset as FFCV files,
# train a ResNet-9 with 2 processes, evaluate, and say where the run directory is.
set -euo pipefail

DATA="${DEMO_DATA:-data/shapes}"
RUN_DIR="${DEMO_RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
NPROC="${DEMO_NPROC:-2}"
# One thread per process: 2 processes share this machine's cores (torchrun warns otherwise).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [[ ! -f "$DATA/train.beton" ]]; then
    python -m data_prep synthetic --out "$DATA" --beton --force  # (re)make the demo dataset
fi
torchrun --nproc_per_node "$NPROC" train.py -c configs/demo/train.yaml \
    data.path="$DATA" run.dir="$RUN_DIR" log.progress_bar=false "$@"
python - "$RUN_DIR" <<'PY'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
final = summary["final"]
print(f"\ndemo: val top-1 {final['top1']:.1f}% on {final['samples']} held-out images "
      f"(chance: 10%), {summary['world_size']} processes, {summary['wall_time_s']:.0f} s")
print(f"demo: run directory {sys.argv[1]} (summary.json, metrics.jsonl, curves.png, weights.safetensors)")
PY
