#!/usr/bin/env bash
# Qwen3-30B-A3B on two DGX H100 nodes with every expert-parallel knob set by hand: EP16 across both nodes, the flex
# token dispatcher (DeepEP: one copy per remote node over the NIC), and the MoE all-to-all overlapped with compute.
# `emit` takes the same options (Megatron: --moe-token-dispatcher-type flex --moe-flex-dispatcher-backend deepep
# --overlap-moe-expert-parallel-comm). Compare: --ep-dispatcher alltoall, or --no-ep-overlap.
set -euo pipefail
configurator estimate --model qwen3-30b-a3b --cluster dgx-h100 --num-gpus 16 --seq-len 4096 --global-batch 256 \
  --ep 16 --ep-dispatcher flex --ep-overlap "$@"
