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
# the same recipe without layer decay, each with every seed of SEEDS (default "0 1 2": with 225 training and
# 2,500 val images one seed's top-1 moves by about a point). Prints the table (means and standard deviations over
# the seeds) and writes OUT/table.md. Runs one process; a run already finished in OUT is kept, so an interrupted
# table continues where it stopped.
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
    for seed in ${SEEDS:-0 1 2}; do
        run "$dir/finetune_seed$seed" "$@" ${TARGET[@]+"${TARGET[@]}"} ${FINETUNE[@]+"${FINETUNE[@]}"} \
            "finetune.init_from=$dir/pretrain" "run.seed=$seed"
        run "$dir/scratch_seed$seed" "$@" ${TARGET[@]+"${TARGET[@]}"} "run.seed=$seed"
    done
done
"$PYTHON" - "$OUT" <<'PY'
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])


def summaries(model: Path, kind: str) -> dict[int, dict]:
    """seed -> summary.json of the finished runs of this kind"""
    found = {}
    for path in model.glob(f"{kind}_seed*/summary.json"):
        found[int(path.parent.name.rpartition("_seed")[2])] = json.loads(path.read_text())
    return found


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


rows = ["| model | parameters | pretrain, 50 % of 0-4 | seeds | scratch, 1 % of 5-9 | fine-tuned | gain | "
        "gain per seed | minutes (pre / ft / scratch) |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
for model in sorted(p for p in out.iterdir() if (p / "pretrain" / "summary.json").is_file()):
    pre = json.loads((model / "pretrain" / "summary.json").read_text())
    fine_by_seed, scratch_by_seed = summaries(model, "finetune"), summaries(model, "scratch")
    seeds = sorted(fine_by_seed.keys() & scratch_by_seed.keys())  # a gain compares runs of the same seed
    if not seeds:
        continue
    fine, scratch = [fine_by_seed[s] for s in seeds], [scratch_by_seed[s] for s in seeds]
    top1 = {kind: [s["final"]["top1"] for s in runs] for kind, runs in (("fine", fine), ("scratch", scratch))}
    gains = [f - s for f, s in zip(top1["fine"], top1["scratch"])]
    minutes = " / ".join(f"{statistics.mean(s['wall_time_s'] for s in runs) / 60:.1f}" for runs in ([pre], fine, scratch))
    rows.append(f"| {pre['model']} | {pre['parameters'] / 1e6:.1f} M | {pre['final']['top1']:.1f} % | {len(fine)} | "
                f"{spread(top1['scratch'])} % | **{spread(top1['fine'])} %** | {statistics.mean(gains):+.1f} | "
                f"{', '.join(f'{g:+.1f}' for g in gains)} | {minutes} |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
