#!/usr/bin/env bash
# The GPU check (one call on a CUDA machine, every part under a hard time limit):
#   1. the CUDA-marked tests (tests/test_cuda.py: convert, finetune, every attack, gradient mode
#      and suite, AutoAttack, certify, zoo, torchrun with NCCL, a run resumed across devices, the
#      compiled (Triton) neurons and the population pipeline);
#   2. the speed table: ANN vs SNN forward / BPTT step / input-gradient step, T = 4, 8, 16,
#      batch 64 and 256, eager and compiled neurons (benchmarks/speed.py);
#   3. the ResNet-20 distillation row at T=8 (benchmarks/fidelity_cifar10.py), with as many
#      epochs as fit in the time left, estimated from part 2's BPTT step at batch 64.
# Results, logs and the distillation run (its checkpoint, so a second call resumes it) go to OUT.
#
#   bash benchmarks/gpu_check.sh OUT [DATA_DIR] [MODELS_DIR] [CACHE_DIR]
#
# DATA_DIR holds cifar10_lossless_subset.npz and cifar10_jpeg.npz, MODELS_DIR the ResNet-20
# checkpoint (defaults ../shared/{data,models}). CACHE_DIR may hold the T=8 bias-calibrated start
# SNN converted beforehand on a CPU (distill_start_T8.safetensors) to save GPU time.
# GPU_CHECK_SECONDS (default 540) bounds the whole script; PYTHON (default python3) runs it. For a
# second call: GPU_CHECK_TESTS (a pytest -k expression) picks the tests to run again, and
# GPU_CHECK_SPEED_JSON (the first call's speed.json) skips part 2 and sizes part 3 from it.
set -u
OUT=${1:?usage: gpu_check.sh OUT [DATA_DIR] [MODELS_DIR] [CACHE_DIR]}
DATA=${2:-../shared/data}
MODELS=${3:-../shared/models}
CACHE=${4:-$OUT/cache}
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-540}
mkdir -p "$OUT" "$CACHE"
START=$SECONDS

part() {  # part NAME LIMIT COMMAND...: run COMMAND under LIMIT seconds, log to OUT/NAME.log
    local name=$1 limit=$2 begin=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc, $((SECONDS - begin)) s" | tee -a "$OUT/parts.txt"
    tail -n 4 "$OUT/$name.log"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PYTHON -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

part tests 240 $PYTHON -m pytest -m cuda -p no:cacheprovider -v -rfE --durations=0 \
    --junitxml="$OUT/tests.xml" -k "${GPU_CHECK_TESTS:-cuda}" tests/test_cuda.py

SPEED=${GPU_CHECK_SPEED_JSON:-$OUT/speed.json}
if [ -z "${GPU_CHECK_SPEED_JSON:-}" ]; then
    part speed 150 $PYTHON benchmarks/speed.py --device cuda --timesteps 4,8,16 --batch 64,256 \
        --rounds 5 --compiled --no-costs --data-dir "$DATA" --models-dir "$MODELS" --out "$OUT/speed"
fi

# Epochs of T=8 distillation that fit: 766 steps of batch 64 (49,000 training images), each a
# BPTT step plus the teacher's forward, +30 % for data and held-out evaluation; 90 s are kept for
# the conversion and the CPU evaluation of the row.
LEFT=$((BUDGET - (SECONDS - START)))
EPOCHS=$($PYTHON - "$SPEED" "$LEFT" <<'EOF'
import json, sys
rows = {(r["T"], r["batch"], r["workload"]): r for r in json.load(open(sys.argv[1]))["rows"]}
step = rows[(8, 64, "bptt")]["snn_ms"] + rows[(8, 64, "forward")]["ann_ms"]
epoch = 766 * step / 1000 * 1.3
print(max(0, int((int(sys.argv[2]) - 90) // epoch)), file=sys.stdout)
print(f"estimated epoch: {epoch:.0f} s", file=sys.stderr)
EOF
)
EPOCHS=${EPOCHS:-0}
echo "distillation: $EPOCHS epoch(s) fit in the $LEFT s left" | tee -a "$OUT/parts.txt"
if [ "$EPOCHS" -gt 0 ]; then
    ROW="distill:T=8,epochs=$EPOCHS,lr=0.0003:biascal:mse"
    SEEDED="$CACHE/distill_start_T8.safetensors"
    STARTFILE="$CACHE/resnet20_c512_f50000_cifar10_jpeg_s0_distill_T=8_epochs=${EPOCHS}_lr=0.0003_biascal_mse.start.safetensors"
    [ -f "$SEEDED" ] && [ ! -f "$STARTFILE" ] && cp "$SEEDED" "$STARTFILE"
    part distill $((BUDGET - (SECONDS - START))) $PYTHON benchmarks/fidelity_cifar10.py \
        --models resnet20 --data-dir "$DATA" --models-dir "$MODELS" \
        --finetune-data cifar10_jpeg.npz --finetune-images 50000 --timesteps 2,4,8,16 \
        --device cuda --cache-dir "$CACHE" --out "$OUT/fidelity_cifar10_gpu" --rows "$ROW"
    mkdir -p "$OUT/run"
    for f in "$CACHE"/*distill*/{log.jsonl,config.json,best.safetensors,checkpoint.pt}; do
        [ -f "$f" ] && cp "$f" "$OUT/run/"
    done
fi
echo "total: $((SECONDS - START)) s" | tee -a "$OUT/parts.txt"
