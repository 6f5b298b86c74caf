#!/usr/bin/env bash
# What bench/gpu_proof.py needs on the device machine and that machine lacks, gathered into the
# git-ignored .device/ of this checkout (the device tool's `carry: [".device"]` takes it along):
# the CIFAR-10 parquet (about 18 MB) and wheels of the dependencies its image does not hold
# (datasets and its dill/multiprocess, kornia and kornia_rs, pyautoattack) for Python 3.12 on
# x86-64, at the versions installed in this environment. Run from the repository root:
#   bash bench/gpu_proof_carry.sh [CIFAR10_DIR] [PYTHON]
set -euo pipefail
data=${1:-../shared/data/cifar10}
python=${2:-python3}
[ -f "$data/train-00000-of-00001.parquet" ] || { echo "error: no CIFAR-10 parquet in $data" >&2; exit 2; }
mkdir -p .device/cifar10 .device/whl
cp "$data"/*.parquet .device/cifar10/
for name in datasets dill multiprocess kornia kornia_rs pyautoattack; do
  version=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .device/whl "$name==$version"
done
# pyautoattack's wheel carries 43 MB of example models: drop them (and their RECORD lines) so that
# what travels stays under the device tool's 64 MiB.
"$python" - .device/whl/pyautoattack-*.whl <<'PY'
import sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as wheel:
    kept = {info.filename: wheel.read(info) for info in wheel.infolist() if "/examples/" not in info.filename}
for name in kept:
    if name.endswith(".dist-info/RECORD"):
        kept[name] = b"".join(line for line in kept[name].splitlines(True) if b"/examples/" not in line)
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
    for name, data in kept.items():
        wheel.writestr(name, data)
PY
du -sh .device
