#!/usr/bin/env bash
# Fill .gpu-data/ (ignored by git) with what benchmarks/gpu_check.sh needs on a GPU machine that
# reaches no network: MNIST's IDX files, the peers as pure-Python packages, and the model when one
# is given. Run it here, in the repository root, before sending the tree to the GPU machine
# (about 13 MiB: MNIST 11 MiB, torchattacks 1 MiB, pyautoattack without its 44 MiB of examples).
#
#   benchmarks/gpu_prepare.sh [MODEL.safetensors]
#
# MNIST comes from $REDBLUE_DATA_DIR/mnist (default ../shared/data/mnist); the packages from this
# checkout's .venv (make setup-test installs the `peers` extra's pyautoattack and torchattacks).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${REDBLUE_DATA_DIR:-../shared/data}/mnist"
site=$(.venv/bin/python -c "import pyautoattack, os; print(os.path.dirname(os.path.dirname(pyautoattack.__file__)))")

rm -rf .gpu-data
mkdir -p .gpu-data/mnist .gpu-data/site
cp "$data"/*-ubyte* .gpu-data/mnist/
for package in pyautoattack torchattacks tomli_w; do
    cp -r "$site/$package" .gpu-data/site/
done
rm -rf .gpu-data/site/pyautoattack/examples
find .gpu-data/site -name __pycache__ -prune -exec rm -rf {} +
if [ $# -ge 1 ]; then
    cp "$1" .gpu-data/model.safetensors
fi
du -sh .gpu-data
