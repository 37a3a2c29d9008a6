#!/usr/bin/env bash
# The README's single-GPU benchmark tables, in one go:
#
#   scripts/bench_gpu.sh OUT_DIR [PART]        PART: step | e2e | ffcv | recipes | all (default)
#
# step: ResNet-50 at 224 (batch 256; precision x channels-last, compile, DeepSpeed ZeRO-2)
#       and the CIFAR ResNet-18 / ResNet-9 / cifar_fast at 32 (batch 512; compile off, on,
#       and with CUDA graphs: model.compile_mode=reduce-overhead); trainer / bare loop per row.
# e2e:  the same models fed by the torchvision loader: ResNet-50 from the shared ImageNet
#       photos (replicated to 5,000 files) and ResNet-9 from CIFAR-format arrays.
# ffcv: configs/imagenet/resnet50.yaml at 160, 192, 224 px and resnet18.yaml at 160, 192 px
#       (bf16, channels-last, compile off/on, BATCH images per GPU), fed by the FFCV loader from
#       the shared photos (replicated FFCV_COPIES times) written as FFCV's ResNet-50 ImageNet data
#       (--max-res 500 --write-mode proportion --compress-prob 0.5 --jpeg-quality 90): `e2e`,
#       and `step` (the same points on batches already on the device: the ceiling); then
#       `bench project` on those rates: ImageNet time to train (OUT_DIR/projection, and
#       OUT_DIR/projection_step for the ceiling).
# recipes: the README's CIFAR-10 recipe table (`bench recipes`: configs/cifar10/fast.yaml x20
#       seeds, resnet9.yaml and resnet18.yaml x10, on the 45k/5k split of the shared CIFAR-10
#       JPEGs; SEEDS overrides, e.g. SEEDS=fast=5,resnet9=2,resnet18=2).
# Results: OUT_DIR/<name>/results.{json,md} and charts; OUT_DIR/summary.md collects the tables,
# a section per part, after the GPU, driver and torch version.
# Environment: SHARED_DATASETS (default ../shared/datasets), STEPS, REPEATS, WARMUP, WORKERS;
# ffcv part: BATCH (default 128: the configs' global 1024 over 8 GPUs), FFCV_COPIES (default 50),
# MAX_RES and COMPRESS_PROB (default 500, 0.5), R50_RES and R18_RES (default "160 192 224", "160 192"),
# COMPILE (default false,true).
# A CPU smoke run: COMPILE=false R50_RES="160 192" BATCH=2 STEPS=1 REPEATS=1 WARMUP=0 \
#                  FFCV_COPIES=1 WORKERS=1 scripts/bench_gpu.sh OUT_DIR ffcv
set -uo pipefail
OUT=${1:?usage: scripts/bench_gpu.sh OUT_DIR [step|e2e|ffcv|recipes|all]}
PART=${2:-all}
case $PART in step|e2e|ffcv|recipes|all) ;; *) echo "error: PART $PART: one of step, e2e, ffcv, recipes, all" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_DATASETS:-$(dirname "$0")/../../shared/datasets}
STEPS=${STEPS:-30}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-10}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
BATCH=${BATCH:-128}
FFCV_COPIES=${FFCV_COPIES:-50}
MAX_RES=${MAX_RES:-500}
COMPRESS_PROB=${COMPRESS_PROB:-0.5}
R50_RES=${R50_RES:-160 192 224}
R18_RES=${R18_RES:-160 192}
COMPILE=${COMPILE:-false,true}
PY=${PYTHON:-python}
mkdir -p "$OUT"
status=0

{
    echo "# GPU benchmarks: $PART ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sort | uniq -c |
            while read -r count line; do echo "- GPU: $count x ${line%%,*}, driver ${line##*, }"; done
    else
        echo "- GPU: none (nvidia-smi not found)"
    fi
    echo "- torch, CUDA: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1)"
    echo "- CPU cores: $(nproc); data workers: $WORKERS; $STEPS timed steps x $REPEATS repeats after $WARMUP warm-up steps"
    echo
} >> "$OUT/summary.md"

bench() {  # bench NAME MODE ARGS...: one benchmark into OUT/NAME, table appended to the summary
    local name=$1; shift
    echo "== $name: python -m visiontrain bench $*"
    if "$PY" -m visiontrain bench "$@" --steps "$STEPS" --repeats "$REPEATS" --warmup-steps "$WARMUP" \
        --out "$OUT/$name"; then :; else status=1; fi
    { echo "### $name"; echo; tail -n +4 "$OUT/$name/results.md" 2>/dev/null; echo; } >> "$OUT/summary.md"
}

section() { echo "== part $1"; { echo "## Part: $1"; echo; } >> "$OUT/summary.md"; }

photos() {  # the shared photos, extracted once: $data/photos/imagenet-sample/<wnid>/<photo>
    [[ -d $data/photos/imagenet-sample ]] || { mkdir -p "$data/photos" && tar -xf "$SHARED/imagenet-sample-200.tar" -C "$data/photos"; }
}

replicate() {  # replicate DIR COPIES: DIR/train/<wnid>/1..COPIES.JPEG (links to the photo), DIR/val/<wnid>/<photo>
    local dir=$1 copies=$2 class_dir wnid photo copy first
    photos
    for class_dir in "$data"/photos/imagenet-sample/*/; do
        wnid=$(basename "$class_dir")
        mkdir -p "$dir/train/$wnid" "$dir/val/$wnid"
        first=("$class_dir"*)
        photo=${first[0]##*/}
        cp "$class_dir/$photo" "$dir/val/$wnid/"
        for copy in $(seq 1 "$copies"); do ln -sf "$(realpath "$class_dir/$photo")" "$dir/train/$wnid/$copy.JPEG"; done
    done
}

data=$OUT/data

R50="model.name=resnet50 model.num_classes=1000 data.image_size=224 data.val_image_size=224 batch_per_device=256"
# shellcheck disable=SC2086  # R50, IMAGENET and FFCV are lists of key=value settings, split into words on purpose
if [[ $PART == step || $PART == all ]]; then
    section step
    bench r50_step step $R50 --sweep train.precision=fp32,bf16 model.channels_last=false,true
    bench r50_compile step $R50 train.precision=bf16 model.compile=true
    bench r50_zero2 step $R50 train.precision=bf16 strategy=zero2
    bench cifar_step step batch_per_device=512 train.precision=bf16 \
        --sweep model.name=cifar_resnet18,resnet9,cifar_fast model.compile=false,true
    bench cifar_graphs step batch_per_device=512 train.precision=bf16 model.compile=true \
        model.compile_mode=reduce-overhead --sweep model.name=cifar_resnet18,resnet9,cifar_fast
fi

# shellcheck disable=SC2086  # R50, IMAGENET and FFCV are lists of key=value settings, split into words on purpose
if [[ $PART == e2e || $PART == all ]]; then
    section e2e
    [[ -d $data/imagenet/train ]] || replicate "$data/imagenet" 25
    [[ -d $data/cifar/cifar-10-batches-py ]] || "$PY" - "$data/cifar/cifar-10-batches-py" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]); out.mkdir(parents=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 10000).tolist()}
    (out / name).write_bytes(pickle.dumps(batch))
EOF
    IMAGENET="data.loader=torchvision data.path=$data/imagenet data.recipe=imagenet data.num_workers=$WORKERS"
    bench r50_e2e e2e $R50 model.num_classes=200 train.precision=bf16 $IMAGENET
    bench cifar_e2e e2e data.loader=torchvision "data.path=$data/cifar" "data.num_workers=$WORKERS" \
        batch_per_device=512 train.precision=bf16 --sweep model.name=cifar_resnet18,resnet9
fi

# shellcheck disable=SC2086  # R50, IMAGENET and FFCV are lists of key=value settings, split into words on purpose
if [[ $PART == ffcv || $PART == all ]]; then
    section ffcv
    beton=$data/imagenet_ffcv_x${FFCV_COPIES}_${MAX_RES}_$COMPRESS_PROB
    if [[ ! -f $beton/meta.json ]]; then
        replicate "$data/imagenet_x$FFCV_COPIES" "$FFCV_COPIES"
        echo "== visiontrain prep imagenet -> $beton"
        "$PY" -m visiontrain prep imagenet --train "$data/imagenet_x$FFCV_COPIES/train" --val "$data/imagenet_x$FFCV_COPIES/val" \
            --out "$beton" --max-res "$MAX_RES" --write-mode proportion --compress-prob "$COMPRESS_PROB" --jpeg-quality 90 \
            --workers "$WORKERS" --force || status=1
    fi
    FFCV="data.loader=ffcv data.path=$beton data.progressive_resizing=false data.num_workers=$WORKERS model.num_classes=200
          train.precision=bf16 model.channels_last=true batch_per_device=$BATCH"
    results=()
    for model in resnet50 resnet18; do
        res=R50_RES; [[ $model == resnet18 ]] && res=R18_RES
        sizes=${!res}; sizes=${sizes// /,}
        for mode in e2e step; do
            bench "ffcv_${model}_$mode" "$mode" -c "$ROOT/configs/imagenet/$model.yaml" $FFCV \
                --sweep "data.image_size=$sizes" "model.compile=$COMPILE"
            [[ -f $OUT/ffcv_${model}_$mode/results.json ]] && results+=("$OUT/ffcv_${model}_$mode/results.json")
        done
    done
    for of in e2e step; do
        dest=$OUT/projection; [[ $of == step ]] && dest=$OUT/projection_step
        echo "== python -m visiontrain bench project ${results[*]:-} --of $of --out $dest"
        if (( ${#results[@]} == 0 )); then
            status=1; err="no results to project from"
        elif err=$("$PY" -m visiontrain bench project ${results[@]+"${results[@]}"} --of "$of" --out "$dest" 2>&1 > /dev/null); then
            err=""
        else
            status=1
        fi
        if [[ -z $err ]]; then  # e2e: the whole projection (with e2e / step and data wait); step: its table
            if [[ $of == e2e ]]; then sed 's/^#/###/' "$dest/projection.md"; else sed '/^## /,$d; s/^#/###/' "$dest/projection.md"; fi
            echo
        else
            echo "$err" >&2; printf '### ImageNet time to train from %s rates: not projected\n\n%s\n\n' "$of" "$err"
        fi >> "$OUT/summary.md"
    done
fi
if [[ $PART == recipes || $PART == all ]]; then
    section recipes
    if "$PY" -m visiontrain bench recipes --cifar-jpegs "$SHARED/cifar10-train-jpeg.tar.gz" --work "$data" \
            --label "1 GPU" --out "$OUT/recipes" --seeds "${SEEDS:-fast=20,resnet9=10,resnet18=10}"; then
        sed 's/^#/###/' "$OUT/recipes/recipes.md" >> "$OUT/summary.md"
    else
        status=1; echo "### CIFAR-10 recipes: failed (see the log)" >> "$OUT/summary.md"
    fi
fi
exit $status
