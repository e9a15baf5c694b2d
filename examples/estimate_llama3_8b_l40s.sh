#!/usr/bin/env bash
# NVIDIA L40S (48 GB GDDR6, PCIe only, no NVLink): Llama-3-8B on two nodes, ZeRO-3 data parallel
set -euo pipefail
configurator estimate --model llama3-8b --cluster l40s-pcie --num-gpus 16 --seq-len 4096 --global-batch 64 \
  --tp 1 --pp 1 --sharding zero3 --recompute full "$@"
