#!/usr/bin/env bash
# RCS against a random coreset with the same budget, epochs and seed, on CIFAR-10 (or its first TRAIN_N
# images, data.subset), scored by the evaluation suite (SLF clean + PGD-20), then summarised with standard
# errors. RCS runs with robust-hub's defaults, which reproduce the reference's selection. Scale is set by
# the environment:
#   TRAIN_N (first images of CIFAR-10 train used for pre-training, 0 = all), EPOCHS, WARMUP, INTERVAL, FRACTION,
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
SUBSET="data.subset=$TRAIN_N"
[ "$TRAIN_N" != 0 ] || SUBSET="data.subset=null"
ALPHA="$("$PY" -c "print(f'{10 / $STEPS:.4g}/255')")"  # 1.25 eps in all, as ACL's 2/255 x 5 steps
for seed in $SEEDS; do
  for mode in rcs random; do
    run="$OUT/${mode}_seed$seed"
    if [ ! -f "$run/model/model.safetensors" ]; then
      /usr/bin/time -f "$mode seed $seed pre-training: %e s wall, %U s user" \
      "$PY" "$HERE/trainers/pretrain.py" --config "$HERE/configs/offline.yaml" data.source="$CIFAR" "$SUBSET" \
        data.val_fraction=0.01 model.arch="$ARCH" attack.steps="$STEPS" attack.alpha="$ALPHA" train.batch_size="$BATCH" \
        train.epochs="$EPOCHS" train.warmup_epochs=1 train.seed="$seed" train.checkpoint_every=0 train.output_dir="$run" \
        coreset.mode="$mode" coreset.fraction="$FRACTION" coreset.warmup_epochs="$WARMUP" coreset.interval="$INTERVAL"
    fi
    "$PY" -m robust_hub.cli eval "$run/model" --protocols slf --metrics clean,pgd20 --dataset "$CIFAR" \
      --out "$run/eval" --epochs "$EVAL_EPOCHS" --n-train "$EVAL_N_TRAIN" --n-test "$EVAL_N_TEST" --seed 0 --no-progress
  done
done
"$PY" - "$OUT" $SEEDS <<'PYEOF'
# Per run and per coreset mode: SLF clean and PGD-20 accuracy (%); the mean over seeds with its standard error
# (sample std / sqrt(seeds)), and the binomial standard error of one run's accuracy on its test images.
import json, math, sys, pathlib
out, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("| coreset | seed | SLF clean % | SLF PGD-20 % |\n|---|---|---|---|")
summary = {}
for mode in ("rcs", "random"):
    for seed in seeds:
        (record,) = [json.loads(p.read_text()) for p in (out / f"{mode}_seed{seed}" / "eval").glob("*.json")]
        clean, pgd, n = record["metrics"]["clean_acc"], record["metrics"]["pgd20_acc"], record["dataset"]["n_test"]
        summary.setdefault(mode, []).append((clean, pgd, n))
        print(f"| {'RCS' if mode == 'rcs' else 'random'} | {seed} | {100 * clean:.1f} | {100 * pgd:.1f} |")
print()
for mode, runs in summary.items():
    parts = []
    for k, name in ((0, "clean"), (1, "PGD-20")):
        values = [100 * r[k] for r in runs]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
        binomial = 100 * math.sqrt(mean / 100 * (1 - mean / 100) / runs[0][2])
        parts.append(f"{name} {mean:.2f} +- {sd / math.sqrt(len(values)):.2f} (seeds), +- {binomial:.2f} (test images, one run)")
    print(f"{mode}: " + "; ".join(parts))
PYEOF
