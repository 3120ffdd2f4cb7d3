#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: a lent GPU's minutes are few.
#   * the machine and library versions;
#   * throughput at the default batch (64) and at 256: library trainer vs a bare loop
#     (AMP, channels_last, fused AdamW, cuDNN autotuning, loader workers), loading,
#     inference eager and compiled;
#   * the trainer's own tests on CUDA: checkpoints and history, and a killed run that resumes.
#
#   PYTHON=.venv/bin/python bash bench/cuda_check.sh        (default PYTHON: python3)
# Each step has its own time limit, so a hang in one still lets the others report.
set -u
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() { echo; echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "$(nproc) CPU cores"
"$py" -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__,
'| CUDA', torch.version.cuda, '| bf16', torch.cuda.is_bf16_supported())"

step "throughput, default batch 64"
timeout 200 "$py" bench/throughput.py --device cuda --batches 400 --repeats 3

step "throughput, batch 256"
timeout 120 "$py" bench/throughput.py --device cuda --batches 150 --batch-size 256 --repeats 3 --no-compile

step "trainer tests on CUDA"
timeout 200 "$py" -m pytest -q -p no:cacheprovider tests/test_train.py -k "fit_writes or resumes"

step "done"
