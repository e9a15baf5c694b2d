#!/usr/bin/env bash
# Llama-3-70B on a single 8-GPU H100 node only fits with the optimizer partly on the CPU: the search picks
# the offload fraction (and checks host RAM).
set -euo pipefail
configurator plan --model llama3-70b --cluster dgx-h100 --num-gpus 8 --seq-len 4096 --global-batch 32 --top 3 "$@"
