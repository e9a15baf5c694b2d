#!/usr/bin/env bash
# NVIDIA V100 16GB on AWS p3.16xlarge (25 Gb/s between nodes, where AMP/Pipette measured): Llama-2-7B, TP8 PP2
set -euo pipefail
configurator estimate --model llama2-7b --cluster aws-p3-v100-16gb --num-gpus 16 --seq-len 2048 \
  --global-batch 32 --tp 8 --pp 2 --recompute full --precision fp16 "$@"
