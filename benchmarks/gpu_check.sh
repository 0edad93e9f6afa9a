#!/usr/bin/env bash
# Issue 11's GPU checks in one run (a few minutes on an H100 or H200; each step has its own timeout,
# 9 minutes in all at most, so `run` with timeout_s=600 returns every step's output):
#   - `standard` at eps 0.1 on the full MNIST test set with the default batch size (auto), against
#     the original AutoAttack's standard version (pyautoattack, batch 10,000) and torchattacks'
#     AutoAttack; time, robust accuracy, peak GPU memory;
#   - the evaluator's peak memory on 10,000 images;
#   - FGSM and PGD-40 on 10,000 images against torchattacks, and against one plain forward +
#     backward pass per step; the host synchronisations of one call of each attack (CUDA's sync
#     debug mode);
# then the results as one Markdown table (the format of benchmarks/README.md).
#
# Run from the repository root, after benchmarks/gpu_prepare.sh [MODEL] filled .gpu-data/ here:
#   benchmarks/gpu_check.sh                # on the GPU machine: python3 with PyTorch and CUDA
#   benchmarks/gpu_check.sh --cpu-dry-run  # here: the same steps on the CPU, on 50 images, small budgets
# Without .gpu-data/model.safetensors the model is trained first (the paper's MLP, PGD-7 at eps 0.1,
# 3 epochs on 20,000 images). Results also go to $OUT (or out/gpu-check/): log.txt, summary.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda; n=10000; extra_attacks="--repeats 3"; extra_evaluate=""
if [ "${1:-}" = "--cpu-dry-run" ]; then
    device=cpu; n=50; extra_attacks="--quick --repeats 1"; extra_evaluate="--memory-n 300"
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$device" = cpu ] && python=.venv/bin/python
out=${OUT:-out/gpu-check}
mkdir -p "$out"
summary="$out/summary.jsonl"
rm -f "$summary"
export PYTHONPATH="$PWD/src:$PWD/.gpu-data/site${PYTHONPATH:+:$PYTHONPATH}"
export REDBLUE_DATA_DIR="$PWD/.gpu-data" PYTHONUNBUFFERED=1

[ -d .gpu-data/mnist ] || { echo "error: .gpu-data/mnist is missing; run benchmarks/gpu_prepare.sh here first" >&2; exit 2; }
{
    echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), device $device"
    if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    model=.gpu-data/model.safetensors
    if [ ! -f "$model" ]; then
        echo "== training the model (no .gpu-data/model.safetensors)"
        epochs=3; subset=20000
        [ "$device" = cpu ] && { epochs=1; subset=2000; }
        model="$out/model.safetensors"
        "$python" -m redblue train --model mlp --objective pgd:eps=0.1 --epochs $epochs --train-subset $subset \
            --device "$device" --out "$model"
    fi
    # a step that fails or runs out of time is reported, and the next one still runs
    echo "== standard against AutoAttack, and memory"
    timeout 300 "$python" benchmarks/evaluate.py --device "$device" --model "$model" --n $n --eps 0.1 \
        --summary "$summary" $extra_evaluate || echo "== evaluate.py stopped: exit code $?"
    echo "== FGSM and PGD-40 against torchattacks and the plain gradient; host synchronisations"
    timeout 200 "$python" benchmarks/attacks.py --device "$device" --model "$model" --n $n --eps 0.1 --skip c \
        --summary "$summary" $extra_attacks || echo "== attacks.py stopped: exit code $?"
    echo "== summary"
    [ -s "$summary" ] && "$python" benchmarks/measure.py "$summary"
    echo "== done $(date -u '+%H:%M:%S UTC')"
} 2>&1 | tee "$out/log.txt"
