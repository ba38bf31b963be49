#!/usr/bin/env bash
# Measures issue 13's speed items on one GPU, each against its peer in the same run, into a folder.
#
#   bash experiments/bench/gpu_suite.sh [OUT_DIR]        (from the repository root; PYTHON=... to pick the python)
#   SECTIONS=feed bash experiments/bench/gpu_suite.sh    (only some sections: nms, step, feed; default all three)
#
# Needs jaxdet's dependencies with a CUDA jaxlib, and torch + torchvision with CUDA for the peers (without them,
# jaxdet alone is timed). Writes OUT_DIR/machine.txt (nvidia-smi, versions) and, by section:
#   nms   nms.txt (experiments/bench/nms.py: both NMS algorithms against torchvision's CUDA kernels, with vmap);
#   step  train_step_b{16,64,256}.txt (experiments/bench/train_step.py: the CenterNet shapes train step against
#         PyTorch eager, and torch.compile unless SKIP_COMPILE=1); about 6-8 minutes with nms, mostly compilation;
#   feed  feed.txt: experiments/train.py at batch 256 with the augmentation on the device and 2 batches prefetched
#         (feed_device/), and with the host pipeline and 8 loader workers (feed_host/), against the train step alone
#         and the device augmentation's cost (experiments/bench/feed.py, same run). Generates shapes/default into
#         $SHAPES_DATA_DIR (default OUT_DIR/tfds) first when it is not there (about 2 minutes). About 5 minutes.
# One device call runs at most 10 minutes: run `SECTIONS=nms,step` and `SECTIONS=feed` as two calls.
set -euo pipefail
OUT=${1:-gpu_results/$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python}
SECTIONS=${SECTIONS:-nms,step,feed}
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

if [[ ",$SECTIONS," == *,nms,* ]]; then
  "$PYTHON" experiments/bench/nms.py --device=gpu --repeats=50 --algorithms=bitmask,tiled 2>&1 | tee "$OUT/nms.txt"
fi

if [[ ",$SECTIONS," == *,step,* ]]; then
  VARIANTS=jaxdet,flax-conv,torch-eager,torch-eager-cl
  [[ "${SKIP_COMPILE:-0}" == 1 ]] || VARIANTS=$VARIANTS,torch-compile
  for BATCH in 16 64 256; do
    "$PYTHON" experiments/bench/train_step.py --device=gpu --batch_size="$BATCH" --rounds=5 --steps=20 \
        --variants="$VARIANTS" 2>&1 | tee "$OUT/train_step_b$BATCH.txt"
  done
fi

if [[ ",$SECTIONS," == *,feed,* ]]; then
  DATA=${SHAPES_DATA_DIR:-$OUT/tfds}
  "$PYTHON" -m jaxdet.data.shapes --config=default --data_dir="$DATA"
  # Speed only: a lower learning rate keeps batch 256 finite; no checkpoints or evaluations but the last.
  TRAIN=(experiments/train.py --config=experiments/configs/centernet_shapes.py --config.batch_size=256
         --config.eval_batch_size=256 --config.log_every=50 --config.eval_every=100000
         --config.checkpoint_every=100000 --config.num_pictures=0 --config.optim.learning_rate=0.001)
  JAXDET_DATA_DIR="$DATA" "$PYTHON" "${TRAIN[@]}" --workdir="$OUT/feed_device" --config.total_steps=600 \
      --config.data.device_augment=True --config.prefetch_to_device=2 --config.data.read_threads=4 \
      > "$OUT/feed_device.log" 2>&1
  JAXDET_DATA_DIR="$DATA" "$PYTHON" "${TRAIN[@]}" --workdir="$OUT/feed_host" --config.total_steps=100 \
      --config.data.worker_count=8 > "$OUT/feed_host.log" 2>&1
  "$PYTHON" experiments/bench/feed.py --device=gpu --data_dir="$DATA" --batch_size=256 --batches=8 --steps=20 \
      --rounds=5 --train_workdir="$OUT/feed_device" --train_workdir="$OUT/feed_host" 2>&1 | tee "$OUT/feed.txt"
fi
echo "results in $OUT"
