#!/usr/bin/env bash
# Measures issue 13's speed items on one GPU, each against its PyTorch peer in the same run, into a folder.
#
#   bash experiments/bench/gpu_suite.sh [OUT_DIR]        (from the repository root; PYTHON=... to pick the python)
#
# Needs jaxdet's dependencies with a CUDA jaxlib, and torch + torchvision with CUDA for the peers (without them,
# jaxdet alone is timed). Writes OUT_DIR/machine.txt (nvidia-smi, versions), nms.txt (experiments/bench/nms.py:
# both NMS algorithms against torchvision's CUDA kernels, including the vmap cases) and train_step_b{16,64,256}.txt
# (experiments/bench/train_step.py: the CenterNet shapes train step against PyTorch eager, and torch.compile unless
# SKIP_COMPILE=1). About 6-8 minutes on one H200, most of it compilation.
set -euo pipefail
OUT=${1:-gpu_results/$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python}
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
mkdir -p "$OUT"
{
  date -u
  nvidia-smi || true
  "$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
torch.cuda.get_device_name(0))" || echo "torch/torchvision with CUDA unavailable: jaxdet only"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

"$PYTHON" experiments/bench/nms.py --device=gpu --repeats=50 --algorithms=bitmask,tiled 2>&1 | tee "$OUT/nms.txt"

VARIANTS=jaxdet,flax-conv,torch-eager,torch-eager-cl
[[ "${SKIP_COMPILE:-0}" == 1 ]] || VARIANTS=$VARIANTS,torch-compile
for BATCH in 16 64 256; do
  "$PYTHON" experiments/bench/train_step.py --device=gpu --batch_size="$BATCH" --rounds=5 --steps=20 \
      --variants="$VARIANTS" 2>&1 | tee "$OUT/train_step_b$BATCH.txt"
done
echo "results in $OUT"
