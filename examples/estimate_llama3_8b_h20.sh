#!/usr/bin/env bash
# NVIDIA H20 (96 GB, 148 TFLOP/s bf16): Llama-3-8B on one HGX H20 node, fp8
set -euo pipefail
configurator estimate --model llama3-8b --cluster hgx-h20 --num-gpus 8 --seq-len 8192 --global-batch 64 \
  --tp 2 --pp 1 --precision fp8 --recompute selective "$@"
