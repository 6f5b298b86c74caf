#!/usr/bin/env bash
# RCS against a random coreset with the same budget, epochs and seed, on CIFAR-10 (or a slice of it),
# scored by the evaluation suite (SLF clean + PGD-20). Scale is set by the environment:
#   TRAIN_N (images of CIFAR-10 train used for pre-training, 0 = all), EPOCHS, WARMUP, INTERVAL, FRACTION,
#   BATCH, ARCH, STEPS (PGD steps of ACL), SEEDS, EVAL_EPOCHS, EVAL_N_TRAIN, EVAL_N_TEST, OUT.
# Example (the paper's setting needs a GPU):
#   TRAIN_N=0 EPOCHS=1000 WARMUP=100 INTERVAL=20 ARCH=robust_resnet18 BATCH=512 STEPS=5 bench/rcs_vs_random.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$HERE/.venv/bin/python}"
CIFAR="${CIFAR:-$HERE/../shared/data/cifar10}"
OUT="${OUT:-$HERE/outputs/rcs_vs_random}"
TRAIN_N="${TRAIN_N:-0}" EPOCHS="${EPOCHS:-6}" WARMUP="${WARMUP:-2}" INTERVAL="${INTERVAL:-2}" FRACTION="${FRACTION:-0.2}"
BATCH="${BATCH:-64}" ARCH="${ARCH:-robust_resnet_tiny}" STEPS="${STEPS:-2}" SEEDS="${SEEDS:-1 2}"
EVAL_EPOCHS="${EVAL_EPOCHS:-10}" EVAL_N_TRAIN="${EVAL_N_TRAIN:-5000}" EVAL_N_TEST="${EVAL_N_TEST:-1000}"
mkdir -p "$OUT"
DATA="$CIFAR"
if [ "$TRAIN_N" != 0 ]; then  # the first TRAIN_N training images, same hub schema
  DATA="$OUT/cifar10_first_$TRAIN_N"
  "$PY" - "$CIFAR" "$DATA" "$TRAIN_N" <<'PYEOF'
import sys, pathlib, pyarrow.parquet as pq
src, dst, n = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
dst.mkdir(parents=True, exist_ok=True)
pq.write_table(pq.read_table(src / "train-00000-of-00001.parquet").slice(0, n), dst / "train-00000-of-00001.parquet")
PYEOF
fi
ALPHA="$("$PY" -c "print(f'{10 / $STEPS:.4g}/255')")"  # 1.25 eps in all, as ACL's 2/255 x 5 steps
for seed in $SEEDS; do
  for mode in rcs random; do
    run="$OUT/${mode}_seed$seed"
    if [ ! -f "$run/model/model.safetensors" ]; then
      "$PY" "$HERE/trainers/pretrain.py" --config "$HERE/configs/offline.yaml" data.source="$DATA" data.val_fraction=0.01 \
        model.arch="$ARCH" attack.steps="$STEPS" attack.alpha="$ALPHA" train.batch_size="$BATCH" train.epochs="$EPOCHS" \
        train.warmup_epochs=1 train.seed="$seed" train.checkpoint_every=0 train.output_dir="$run" \
        coreset.mode="$mode" coreset.fraction="$FRACTION" coreset.warmup_epochs="$WARMUP" coreset.interval="$INTERVAL"
    fi
    "$PY" -m robust_hub.cli eval "$run/model" --protocols slf --metrics clean,pgd20 --dataset "$CIFAR" \
      --out "$run/eval" --epochs "$EVAL_EPOCHS" --n-train "$EVAL_N_TRAIN" --n-test "$EVAL_N_TEST" --seed 0 --no-progress
  done
done
