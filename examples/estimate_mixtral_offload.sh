#!/usr/bin/env bash
# Mixtral-8x7B on one H100 node with expert parallelism and half of the optimizer offloaded to the CPU.
set -euo pipefail
configurator estimate --model mixtral-8x7b --cluster dgx-h100 --num-gpus 8 \
  --seq-len 4096 --global-batch 256 --tp 2 --ep 4 --recompute full --offload 0.5 "$@"
