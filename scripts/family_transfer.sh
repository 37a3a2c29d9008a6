#!/usr/bin/env bash
# Pretrain -> fine-tune on real CIFAR-10 images for several model families: the table in docs/models.md.
#
#   scripts/family_transfer.sh DATA OUT [MODEL ...]
#
# DATA: the stratified 45k/5k split, written by
#   python -m visiontrain prep cifar10 --source DIR --out DATA --val-fraction 0.1 --seed 0
# (DIR: the extracted ../shared/datasets/cifar10-train-jpeg.tar.gz). For each model (default: the four
# below): pretrain on half of classes 0-4's labels (configs/cifar10/family_transfer.yaml), fine-tune from it on classes
# 5-9 with 1 % of their labels (45 per class; layer decay 0.75), and train the same labels from scratch with
# the same recipe without layer decay. Prints the table and writes OUT/table.md. Runs one process; a run already
# finished in OUT is kept, so an interrupted table continues where it stopped.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: scripts/family_transfer.sh DATA OUT [MODEL ...]" >&2; exit 2; }
DATA=$1
OUT=$2
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -f $DATA/train.beton && -f $DATA/val.beton ]] || { echo "error: $DATA holds no train.beton/val.beton" >&2; exit 2; }
# model.name and its model.kwargs, one entry per model
MODELS=("$@")
if [[ ${#MODELS[@]} -eq 0 ]]; then
    MODELS=("timm/convnext_atto"
            "timm/vit_tiny_patch16_224 model.kwargs.img_size=32 model.kwargs.patch_size=8"
            "timm/mobilenetv3_small_100"
            "torchvision/resnet18")
fi
TARGET=("data.classes=[5,6,7,8,9]" data.train_fraction=0.01 train.epochs=20 train.batch_size=32
        schedule.warmup_epochs=2)
# Fine-tuning keeps more of what pretraining learnt in the early layers: layer decay (lr 2e-3 at the head).
FINETUNE=(optim.layer_decay=0.75)
run() {  # run DIR ARGS...: train.py into DIR, unless DIR already holds a finished run
    local dir=$1
    shift
    [[ -f $dir/summary.json ]] && { echo "kept: $dir"; return; }
    "$PYTHON" train.py -c configs/cifar10/family_transfer.yaml "$@" "run.dir=$dir"
}
cd "$ROOT"
for entry in ${MODELS[@]+"${MODELS[@]}"}; do
    read -r name rest <<< "$entry"
    read -r -a extra <<< "$rest"
    dir=$OUT/${name//\//_}
    set -- "model.name=$name" ${extra[@]+"${extra[@]}"} "data.path=$DATA"
    run "$dir/pretrain" "$@"
    run "$dir/finetune" "$@" ${TARGET[@]+"${TARGET[@]}"} ${FINETUNE[@]+"${FINETUNE[@]}"} \
        "finetune.init_from=$dir/pretrain"
    run "$dir/scratch" "$@" ${TARGET[@]+"${TARGET[@]}"}
done
"$PYTHON" - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = ["| model | parameters | pretrain, 50 % of 0-4 | scratch, 1 % of 5-9 | fine-tuned | gain | minutes (pre / ft / scratch) |",
        "|---|---:|---:|---:|---:|---:|---|"]
for model in sorted(p for p in out.iterdir() if (p / "scratch" / "summary.json").is_file()):
    runs = {run: json.loads((model / run / "summary.json").read_text()) for run in ("pretrain", "finetune", "scratch")}
    top1 = {run: summary["final"]["top1"] for run, summary in runs.items()}
    minutes = " / ".join(f"{summary['wall_time_s'] / 60:.1f}" for summary in runs.values())
    rows.append(f"| {runs['pretrain']['model']} | {runs['pretrain']['parameters'] / 1e6:.1f} M | {top1['pretrain']:.1f} % | "
                f"{top1['scratch']:.1f} % | **{top1['finetune']:.1f} %** | {top1['finetune'] - top1['scratch']:+.1f} | "
                f"{minutes} |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
