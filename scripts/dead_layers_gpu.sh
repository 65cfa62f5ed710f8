#!/usr/bin/env bash
# The dead-layer runs that docs/findings.md section 3 leaves to a GPU, in one command:
#
#     bash scripts/dead_layers_gpu.sh CIFAR [OUT]
#
# CIFAR is the CIFAR-10 JPEG copy: its folder (train/ and test/ class folders) or the
# cifar10-jpeg.tar.gz itself (unpacked under $TMPDIR). OUT (default ./dead-layers-out) gets one
# JSON and one log per run, summary.txt and three figures:
#   stems.png      GradAttn and ResNet-18 under the ImageNet and the small stem
#   optimiser.png  GradAttn under Adam + coupled L2 (the protocol), AdamW, and no decay
#   models.png     GradAttn, noskip18 (no skips, no taps) and ResNet-18 (skips)
#
# Every run is scripts/dead_layers.py on full CIFAR-10 (45,000 train / 5,000 val / 10,000
# test), seed 42, batch 128, lr 1e-3, at most DEAD_LAYERS_EPOCHS epochs (default 24 = 8,448
# steps; on the H200 run of 2026-12-04 GradAttn's deep stages died at 6,000-8,500), through the
# library's loop under the protocol (plateau cut and early stopping; eager fp32). The seven runs
# go side by side on one GPU, each one CPU core for its batches; each is cut at
# DEAD_LAYERS_BUDGET_S seconds (default 500) and a cut run keeps its finished epochs.
# Needs python3 with torch, numpy, pillow and matplotlib; the repo is imported from its tree.
#
# DEAD_LAYERS_CPU=1 is a dry run of the plumbing on a CPU (a 200-image subset, one epoch).

set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash scripts/dead_layers_gpu.sh CIFAR [OUT]  (CIFAR: the JPEG copy's folder or its .tar.gz)" >&2
    exit 2
fi
CIFAR=$1
OUT=${2:-$PWD/dead-layers-out}
PY=${PYTHON:-python3}
EPOCHS=${DEAD_LAYERS_EPOCHS:-24}
BUDGET=${DEAD_LAYERS_BUDGET_S:-500}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -f "$CIFAR" ]; then
    unpacked=${TMPDIR:-/tmp}/gradattn-cifar10-jpeg
    mkdir -p "$unpacked"
    [ -d "$unpacked/train" ] || tar xzf "$CIFAR" -C "$unpacked"
    CIFAR=$unpacked
fi
if [ ! -d "$CIFAR/train" ] || [ ! -d "$CIFAR/test" ]; then
    echo "error: $CIFAR has no train/ and test/ folders: give the CIFAR-10 JPEG copy (folder or .tar.gz)" >&2
    exit 2
fi

if [ "${DEAD_LAYERS_CPU:-0}" = 1 ]; then
    size=(--n-train 200 --n-val 100 --n-test 100 --probe-size 100 --probe-batches 1)
    device=cpu; EPOCHS=1
else
    size=(--n-train 45000 --n-val 5000 --n-test 10000)
    device=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: torch sees no CUDA GPU here; DEAD_LAYERS_CPU=1 runs the plumbing on a CPU')"
fi
mkdir -p "$OUT"
common=(--cifar "$CIFAR" "${size[@]}" --epochs "$EPOCHS" --device "$device" --seed 42)

# Decode the JPEGs once into the subset cache, so the runs below do not race to write it.
"$PY" scripts/dead_layers.py "${common[@]}" --decode-only

runs=(
    "gradattn-imagenet-adam|--model gradattn --pe none --stem imagenet"
    "gradattn-small-adam|--model gradattn --pe none --stem small"
    "gradattn-imagenet-adamw|--model gradattn --pe none --stem imagenet --optimizer adamw"
    "gradattn-imagenet-wd0|--model gradattn --pe none --stem imagenet --weight-decay 0"
    "noskip18-imagenet-adam|--model noskip18 --stem imagenet"
    "resnet18-imagenet-adam|--model resnet18 --stem imagenet"
    "resnet18-small-adam|--model resnet18 --stem small"
)
pids=()
for run in "${runs[@]}"; do
    name=${run%%|*}
    read -r -a extra <<< "${run#*|}"
    timeout "$BUDGET" "$PY" scripts/dead_layers.py "${common[@]}" "${extra[@]}" \
        --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    rc=0; wait "${pids[$i]}" || rc=$?
    # 124: cut by the budget, which keeps the finished epochs; anything else is a failure.
    if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then
        echo "run ${runs[$i]%%|*} failed (exit $rc): see $OUT/${runs[$i]%%|*}.log" >&2
        failed=1
    fi
done

j() { for n in "$@"; do [ -s "$OUT/$n.json" ] && echo "$OUT/$n.json"; done; }
"$PY" scripts/dead_layers.py --summary $(j "${runs[@]%%|*}") | tee "$OUT/summary.txt"
"$PY" scripts/dead_layers.py --plot $(j gradattn-imagenet-adam gradattn-small-adam \
    resnet18-imagenet-adam resnet18-small-adam) --png "$OUT/stems.png"
"$PY" scripts/dead_layers.py --plot $(j gradattn-imagenet-adam gradattn-imagenet-adamw \
    gradattn-imagenet-wd0) --png "$OUT/optimiser.png"
"$PY" scripts/dead_layers.py --plot $(j gradattn-imagenet-adam noskip18-imagenet-adam \
    resnet18-imagenet-adam) --png "$OUT/models.png"
exit "$failed"
