#!/usr/bin/env bash
# The README's single-GPU benchmark tables, in one go:
#
#   scripts/bench_gpu.sh OUT_DIR [PART]        PART: step | e2e | all (default)
#
# step: ResNet-50 at 224 (batch 256; precision x channels-last, compile, DeepSpeed ZeRO-2)
#       and the CIFAR ResNet-18 / ResNet-9 at 32 (batch 512; compile off/on).
# e2e:  the same models fed by the torchvision loader: ResNet-50 from the shared ImageNet
#       photos (replicated to 5,000 files) and ResNet-9 from CIFAR-format arrays.
# Results: OUT_DIR/<name>/results.{json,md} and charts; OUT_DIR/summary.md collects the tables.
# Environment: SHARED_DATASETS (default ../shared/datasets), STEPS, REPEATS, WORKERS.
set -uo pipefail
OUT=${1:?usage: scripts/bench_gpu.sh OUT_DIR [step|e2e|all]}
PART=${2:-all}
SHARED=${SHARED_DATASETS:-$(dirname "$0")/../../shared/datasets}
STEPS=${STEPS:-30}
REPEATS=${REPEATS:-3}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
PY=${PYTHON:-python}
mkdir -p "$OUT"
status=0

bench() {  # bench NAME MODE ARGS...: one benchmark into OUT/NAME, table appended to the summary
    local name=$1; shift
    echo "== $name: python -m visiontrain.bench $*"
    if "$PY" -m visiontrain.bench "$@" --steps "$STEPS" --repeats "$REPEATS" --out "$OUT/$name"; then :; else status=1; fi
    { echo "## $name"; echo; tail -n +4 "$OUT/$name/results.md" 2>/dev/null; echo; } >> "$OUT/summary.md"
}

R50="model.name=resnet50 model.num_classes=1000 data.image_size=224 data.val_image_size=224 batch_per_device=256"
if [[ $PART == step || $PART == all ]]; then
    bench r50_step step $R50 --sweep train.precision=fp32,bf16 model.channels_last=false,true
    bench r50_compile step $R50 train.precision=bf16 model.compile=true
    bench r50_zero2 step $R50 train.precision=bf16 strategy=zero2
    bench cifar_step step batch_per_device=512 train.precision=bf16 \
        --sweep model.name=cifar_resnet18,resnet9 model.compile=false,true
fi

if [[ $PART == e2e || $PART == all ]]; then
    data=$OUT/data
    if [[ ! -d $data/imagenet/train ]]; then
        mkdir -p "$data/photos" && tar -xf "$SHARED/imagenet-sample-200.tar" -C "$data/photos"
        for class_dir in "$data"/photos/imagenet-sample/*/; do
            wnid=$(basename "$class_dir")
            mkdir -p "$data/imagenet/train/$wnid" "$data/imagenet/val/$wnid"
            photo=$(ls "$class_dir" | head -1)
            cp "$class_dir/$photo" "$data/imagenet/val/$wnid/"
            for copy in $(seq 1 25); do ln -s "$(realpath "$class_dir/$photo")" "$data/imagenet/train/$wnid/$copy.JPEG"; done
        done
    fi
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
    bench cifar_e2e e2e data.loader=torchvision data.path=$data/cifar data.num_workers=$WORKERS \
        batch_per_device=512 train.precision=bf16 --sweep model.name=cifar_resnet18,resnet9
fi
exit $status
