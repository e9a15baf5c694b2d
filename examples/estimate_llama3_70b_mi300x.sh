#!/usr/bin/env bash
# AMD Instinct MI300X (192 GB): Llama-3-70B on two 8x MI300X nodes with 8x 400 Gb/s RoCE, TP8 (xGMI) DP2
set -euo pipefail
configurator estimate --model llama3-70b --cluster mi300x-roce400 --num-gpus 16 --seq-len 8192 \
  --global-batch 128 --tp 8 --pp 1 --recompute selective "$@"
