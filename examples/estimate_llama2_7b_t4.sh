#!/usr/bin/env bash
# NVIDIA T4 (16 GB GDDR6, fp16 only) on AWS g4dn.12xlarge: Llama-2-7B over 4 nodes, TP4 PP4, fp16
set -euo pipefail
configurator estimate --model llama2-7b --cluster aws-g4dn-t4 --num-gpus 16 --seq-len 2048 --global-batch 32 \
  --tp 4 --pp 4 --recompute full --precision fp16 "$@"
