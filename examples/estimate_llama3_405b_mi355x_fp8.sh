#!/usr/bin/env bash
# AMD Instinct MI355X (288 GB, fp8): Llama-3.1-405B on 8 nodes, TP8 PP9 (126 layers = 9 x 14), fp8
set -euo pipefail
configurator estimate --model llama3-405b --cluster mi355x-roce400 --num-gpus 72 --seq-len 8192 \
  --global-batch 128 --tp 8 --pp 9 --recompute full --precision fp8 "$@"
