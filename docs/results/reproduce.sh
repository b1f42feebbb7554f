#!/usr/bin/env bash
# Reproduce docs/results/ (see docs/results/README.md): the degradation experiment and the
# gradient-flow figures, on the CPU.
#
# Usage: docs/results/reproduce.sh [CIFAR_DIR] [RUNS_DIR]
#   CIFAR_DIR: the directory that contains cifar-10-batches-py/ (default /work/shared/data)
#   RUNS_DIR:  where the full runs go, checkpoints included (default runs/)
#
set -euo pipefail
DATA="${1:-/work/shared/data}"
RUNS="${2:-runs}"
cd "$(dirname "$0")/../.."
COMMON=(--depth 20 56 --steps 160 --evals 4 --batch-size 128 --recipe paper --seed 0
        --data-dir "$DATA" --no-download --limit-test 1000 --train-eval 5120 --overwrite)

# 1. plain20, resnet20, plain56, resnet56 for 160 steps each at peak lr 0.03 (section 1 of the
#    README; about 28 minutes on 2 shared CPU cores). compare.log is what the command prints.
mkdir -p "$RUNS"
time minires compare "${COMMON[@]}" --lr 0.03 --out "$RUNS/degradation_lr0.03" | tee "$RUNS/degradation_lr0.03.log"

# 1b. The same four networks on the same 5,120 images, four times longer: 640 steps, 16 epochs
#     (section 1b of the README; about 45 minutes on 2 CPU cores).
time minires compare --depth 20 56 --steps 640 --evals 16 --batch-size 128 --recipe paper --seed 0 \
    --data-dir "$DATA" --no-download --limit-test 1000 --train-eval 5120 --overwrite \
    --lr 0.03 --out "$RUNS/degradation_long" | tee "$RUNS/degradation_long.log"

# 2. The same at the paper's peak lr 0.1, where both 56-layer nets blow up and stay at chance
#    (about 25 minutes).
time minires compare "${COMMON[@]}" --out "$RUNS/degradation_lr0.1"

# 3. Gradient flow at initialisation and the depth sweep (under a minute of CPU time).
time minires gradflow --models plain20 resnet20 plain56 resnet56 \
    --batch-size 128 --sweep 20 32 44 56 110 --sweep-batch-size 32 --out docs/results/gradflow

# 4. Copy the small outputs next to this script (checkpoints stay in $RUNS).
copy_run() {  # copy_run SRC DST FILES...
    local src="$1" dst="$2"; shift 2
    mkdir -p "$dst"
    cp "$src"/summary.txt "$src"/summary.json "$dst"/
    for run in plain20 resnet20 plain56 resnet56; do
        mkdir -p "$dst/$run"
        for f in "$@"; do cp "$src/$run/$f" "$dst/$run/"; done
    done
}
copy_run "$RUNS/degradation_lr0.03" docs/results/degradation config.json metrics.csv metrics.jsonl gradients.json
cp "$RUNS/degradation_lr0.03"/*.png "$RUNS/degradation_lr0.03"/*.svg docs/results/degradation/
cp "$RUNS/degradation_lr0.03.log" docs/results/degradation/compare.log
copy_run "$RUNS/degradation_long" docs/results/degradation_long config.json metrics.csv metrics.jsonl gradients.json
cp "$RUNS/degradation_long"/*.png "$RUNS/degradation_long"/*.svg docs/results/degradation_long/
cp "$RUNS/degradation_long.log" docs/results/degradation_long/compare.log
copy_run "$RUNS/degradation_lr0.1" docs/results/degradation_lr0.1 config.json metrics.csv
cp "$RUNS/degradation_lr0.1"/training_curves.* "$RUNS/degradation_lr0.1"/gradient_depth.* \
   "$RUNS/degradation_lr0.1"/gradient_heatmap_plain56.png "$RUNS/degradation_lr0.1"/gradient_heatmap_resnet56.png \
   docs/results/degradation_lr0.1/
