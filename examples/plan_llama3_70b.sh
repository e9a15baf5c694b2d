#!/usr/bin/env bash
# The best plans for Llama-3-70B on 64 H100 (8 DGX nodes), seq 8192, global batch 256: the search over
# TP/CP/PP/VPP/micro-batch with sharding, recompute and optimizer offload chosen per plan to fit memory.
set -euo pipefail
configurator plan --model llama3-70b --cluster dgx-h100 --num-gpus 64 --seq-len 8192 --global-batch 256 --top 5 "$@"
