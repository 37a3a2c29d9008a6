#!/usr/bin/env bash
# The main job in miniature, offline on CPU: generate the shapes dataset as FFCV files,
# pretrain a ResNet-9 on five shapes, fine-tune it on five other shapes with 10% of their
# labels, train the same network from scratch on those labels for comparison, and say
# where the evaluation report is. Every run uses 2 processes.
set -euo pipefail

DATA="${DEMO_DATA:-data/shapes}"
RUN_ROOT="${DEMO_RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
NPROC="${DEMO_NPROC:-2}"
# Extra key=value settings for every run (e.g. a smaller, faster demo in the tests).
read -r -a EXTRA <<< "${DEMO_OVERRIDES:-}"
# One thread per process: 2 processes share this machine's cores (torchrun warns otherwise).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [[ ! -f "$DATA/train.beton" ]]; then
    # (re)make the demo dataset; DEMO_DATA_ARGS e.g. "--train-per-class 100 --size 24"
    read -r -a DATA_ARGS <<< "${DEMO_DATA_ARGS:-}"
    python -m visiontrain prep synthetic --out "$DATA" --beton --force ${DATA_ARGS[@]+"${DATA_ARGS[@]}"}
fi

train() {  # train CONFIG RUN_DIR [key=value ...]
    local config="$1" run_dir="$2"
    shift 2
    echo "== $run_dir"
    torchrun --nproc_per_node "$NPROC" train.py -c "$config" data.path="$DATA" run.dir="$run_dir" \
        log.progress_bar=false ${EXTRA[@]+"${EXTRA[@]}"} "$@"
}

train configs/demo/pretrain.yaml "$RUN_ROOT/pretrain"
train configs/demo/finetune.yaml "$RUN_ROOT/finetune" finetune.init_from="$RUN_ROOT/pretrain"
train configs/demo/finetune.yaml "$RUN_ROOT/scratch" finetune.init_from=

python - "$RUN_ROOT" <<'PY'
import json, sys
root = sys.argv[1]
runs = {name: json.load(open(f"{root}/{name}/summary.json")) for name in ("pretrain", "finetune", "scratch")}
pre, fine, scratch = (runs[n]["final"] for n in ("pretrain", "finetune", "scratch"))
print(f"\ndemo: pretraining on 5 shapes:        val top-1 {pre['top1']:.1f}% on {pre['samples']} images (chance 20%)")
print(f"demo: fine-tuning on 5 other shapes:  val top-1 {fine['top1']:.1f}% on {fine['samples']} images, "
      f"from {runs['finetune']['train_samples']} labelled images")
print(f"demo: same labels, from scratch:      val top-1 {scratch['top1']:.1f}%")
print(f"demo: {runs['pretrain']['world_size']} processes per run, "
      f"{sum(r['wall_time_s'] for r in runs.values()):.0f} s of training")
print(f"demo: evaluation report {root}/finetune/eval/report.md (runs in {root})")
PY
