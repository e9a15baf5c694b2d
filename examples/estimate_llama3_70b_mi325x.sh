#!/usr/bin/env bash
# AMD Instinct MI325X (256 GB HBM3E): Llama-3-70B on one node, TP4 DP2, no recompute
set -euo pipefail
configurator estimate --model llama3-70b --cluster mi325x-roce400 --num-gpus 8 --seq-len 8192 \
  --global-batch 64 --tp 4 --pp 1 --sharding zero3 "$@"
