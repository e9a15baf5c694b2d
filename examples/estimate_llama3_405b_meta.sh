#!/usr/bin/env bash
# Llama-3.1-405B as Meta trained it: TP8 CP1 PP16 DP128 on 16,384 H100, seq 8192, global batch 2048,
# with one layer less on the first and the last pipeline stage (7, 8 x 14, 7). Without recompute the
# second stage needs ~86 GiB (15 micro-batches in flight), so this example recomputes full layers.
set -euo pipefail
configurator estimate --model llama3-405b --cluster dgx-h100 --num-gpus 16384 \
  --seq-len 8192 --global-batch 2048 --tp 8 --pp 16 --recompute full \
  --pipeline-layers 7,8,8,8,8,8,8,8,8,8,8,8,8,8,8,7 "$@"
