#!/usr/bin/env bash
# GPT-3 175B on 1,024 A100 (DGX A100, HDR InfiniBand) as Narayanan et al. 2021 (SC21) trained it:
# TP8 x PP16 x DP8, interleaved schedule (3 model chunks per pipeline rank), global batch 1536, seq 2048,
# fp16, full recompute, with the Megatron-LM of that paper (no flash attention, no overlap flags).
# Prints memory per stage and the step-time breakdown (compute, bubble, TP/PP/DP communication).
set -euo pipefail
configurator estimate --model gpt3-175b --cluster dgx-a100 --num-gpus 1024 \
  --seq-len 2048 --global-batch 1536 --tp 8 --pp 16 --vpp 3 --recompute full --precision fp16 \
  --sharding none --runtime megatron-2021 "$@"
