#!/usr/bin/env bash
# NVIDIA A800 (A100 with 200 GB/s NVLink): Llama-2-70B on 4 nodes, TP8 PP4
set -euo pipefail
configurator estimate --model llama2-70b --cluster hgx-a800 --num-gpus 32 --seq-len 4096 --global-batch 128 \
  --tp 8 --pp 4 --recompute selective "$@"
