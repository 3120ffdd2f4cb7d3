#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: a lent GPU's minutes are few.
#   * the machine and library versions;
#   * throughput of the library trainer vs a bare loop (AMP, channels_last, fused AdamW,
#     cuDNN autotuning, loader workers) at the default batch (64) and at 256, augmenting
#     in the loader workers and on the GPU (the default from batch 128 up);
#   * the trainer's tests that need CUDA: checkpoints and history, GPU augmentation
#     against the CPU's, and a killed run that resumes bit-identically;
#   * evaluation (decoded cache) and predict (image files) agreeing on CUDA.
#
#   PYTHON=.venv/bin/python bash bench/cuda_check.sh [--compile]   (default PYTHON: python3)
# Each step has its own time limit, so a hang in one still lets the others report.
set -u
py=${PYTHON:-python3}
compile=--no-compile
[ "${1:-}" = "--compile" ] && compile=--compile
export PYTHONUNBUFFERED=1

step() { echo; echo "== $1 ($(date +%T))"; }
throughput() { timeout 100 "$py" bench/throughput.py --device cuda --repeats 3 "$@" | grep -v "^inference, torch.compile: *nan"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "$(nproc) CPU cores"
"$py" -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__,
'| CUDA', torch.version.cuda, '| bf16', torch.cuda.is_bf16_supported())"

step "batch 64, augmenting in the loader workers (default)"
throughput --batches 400 "$compile"
step "batch 64, augmenting on the GPU"
throughput --batches 400 --augment-on device --no-compile
step "batch 256, augmenting on the GPU (default)"
throughput --batches 150 --batch-size 256 --no-compile
step "batch 256, augmenting in the loader workers"
throughput --batches 150 --batch-size 256 --augment-on loader --no-compile

step "trainer tests that need CUDA"
timeout 150 "$py" -m pytest -q -p no:cacheprovider tests/test_train.py -k "cuda or gpu or fit_writes"
step "evaluation and predict give the same probability on CUDA (bf16 autocast)"
timeout 120 "$py" -m pytest -q -s -p no:cacheprovider -o addopts="" tests/test_inference.py -k cuda

step "done"
