#!/usr/bin/env bash
# An MoE search: Mixtral-8x22B on 256 H100, seq 4096, global batch 1024 - expert parallel (EP) and expert
# tensor parallel (ETP) degrees are axes of the space alongside TP/CP/PP/VPP and the micro-batch.
set -euo pipefail
configurator plan --model mixtral-8x22b --cluster dgx-h100 --num-gpus 256 --seq-len 4096 --global-batch 1024 --top 5 "$@"
