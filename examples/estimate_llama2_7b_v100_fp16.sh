#!/usr/bin/env bash
# NVIDIA V100 32GB (DGX-1; fp16 only: bf16 plans are refused by name): Llama-2-7B, TP2 PP2, fp16
set -euo pipefail
configurator estimate --model llama2-7b --cluster dgx1-v100 --num-gpus 16 --seq-len 2048 --global-batch 64 \
  --tp 2 --pp 2 --recompute full --precision fp16 "$@"
