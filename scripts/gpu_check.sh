#!/usr/bin/env bash
# Does this GPU machine run visiontrain's CUDA paths? Numerics of bf16 / channels-last /
# compile against float64, short train.py runs on synthetic data (DDP bf16 with compile,
# fp16 with the GradScaler, DeepSpeed ZeRO-2 fp16 and ZeRO-3 bf16, a resume), and, when
# CIFAR_DIR names an image-folder dataset (train/ and val/), the same ResNet-9 trained in
# fp32, bf16 + channels-last, the same compiled, and fp16: their accuracies should agree.
#
# The `step` part trains ResNet-9 on random data four ways, in fp32, and compares the final
# weights: the fused optimizer update against the per-tensor one (eager), and CUDA-graph
# capture (model.compile_mode=reduce-overhead) against plain compilation.
#
#   [CIFAR_DIR=DIR] [PARTS="numerics train learn step"] scripts/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT"
status=0
PARTS=${PARTS:-numerics train learn step}
if [[ $PARTS == *numerics* ]]; then "$PY" scripts/gpu_numerics.py || status=1; fi
COMMON="schedule.warmup_epochs=0 data.loader=random model.name=cifar_resnet18 train.batch_size=256 data.random_train_samples=8192 log.progress_bar=false"
# shellcheck disable=SC2086  # COMMON is a list of key=value settings, split into words on purpose
train() {  # train NAME OVERRIDES...
    local name=$1; shift
    if "$PY" train.py $COMMON run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1; then
        echo "$name: ok, last epoch $(grep '"event": "epoch"' "$OUT/$name/metrics.jsonl" | tail -1 | grep -o '"img_per_s": [0-9.]*')"
    else
        status=1; echo "$name: FAILED"; tail -5 "$OUT/$name.log"
    fi
}
if [[ $PARTS == *train* ]]; then
train ddp_bf16_compile train.epochs=3 train.precision=bf16 model.compile=true
train ddp_fp16 train.epochs=3 train.precision=fp16
train zero2_fp16 train.epochs=3 train.precision=fp16 parallel.strategy=deepspeed parallel.deepspeed_config=configs/deepspeed/zero2.json
train zero3_bf16 train.epochs=3 train.precision=bf16 parallel.strategy=deepspeed parallel.deepspeed_config=configs/deepspeed/zero3.json
# Resume: two epochs, then the same run dir asked for three: it continues from epoch 2.
train resume train.epochs=2 train.precision=bf16
train resume train.epochs=3 train.precision=bf16
if grep -q '"resume"' "$OUT/resume/metrics.jsonl"; then
    echo "resume: continued from its checkpoint"
else
    status=1; echo "resume: did not resume"
fi
fi
# shellcheck disable=SC2086  # LEARN and each variant's settings are split into words on purpose
if [[ $PARTS == *learn* && -n ${CIFAR_DIR:-} ]]; then
    LEARN="data.loader=torchvision data.path=$CIFAR_DIR model.name=resnet9 train.batch_size=512 train.epochs=8 data.num_workers=$(( $(nproc) - 1 )) log.progress_bar=false"
    for variant in "fp32:train.precision=fp32 model.channels_last=false" "bf16_cl:train.precision=bf16" \
                   "bf16_cl_compile:train.precision=bf16 model.compile=true" "fp16_cl:train.precision=fp16"; do
        name=learn_${variant%%:*}
        if "$PY" train.py $LEARN run.dir="$OUT/$name" ${variant#*:} > "$OUT/$name.log" 2>&1; then
            echo "$name: $(grep -o 'done: val top1 [0-9.]*%' "$OUT/$name.log")"
        else
            status=1; echo "$name: FAILED"; tail -5 "$OUT/$name.log"
        fi
    done
fi
if [[ $PARTS == *step* ]]; then
    STEP="data.loader=random model.name=resnet9 train.batch_size=512 train.epochs=2 train.precision=fp32 schedule.warmup_epochs=0 log.progress_bar=false log.report=false"
    for variant in "fused:optim.fused=true" "foreach:optim.fused=false" "compiled:model.compile=true" \
                   "graphs:model.compile=true model.compile_mode=reduce-overhead"; do
        name=step_${variant%%:*}
        rm -rf "${OUT:?}/$name"  # fresh runs: a leftover run dir would resume and compare old weights
        # shellcheck disable=SC2086
        "$PY" train.py $STEP run.dir="$OUT/$name" ${variant#*:} > "$OUT/$name.log" 2>&1 || { status=1; echo "$name: FAILED"; tail -5 "$OUT/$name.log"; }
    done
    for pair in "fused foreach" "graphs compiled"; do
        read -r one other <<< "$pair"
        "$PY" - "$OUT/step_$one" "$OUT/step_$other" <<'PYEOF' || status=1
import sys
from visiontrain.checkpoint.weights import read_weights
a, b = (read_weights(f"{d}/weights.safetensors") for d in sys.argv[1:])
worst = max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-12))
            for k in a if a[k].is_floating_point())
print(f"{sys.argv[1]} vs {sys.argv[2]}: largest relative weight difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
PYEOF
    done
fi
exit $status
