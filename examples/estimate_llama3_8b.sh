#!/usr/bin/env bash
# Memory of Llama-3-8B on one DGX H100 node with TP2 PP2 DP2, SP and selective recompute
# (the configuration of Megatron-LM's theoretical_memory_usage.py reference in tests/test_memory.py).
set -euo pipefail
configurator estimate --model llama3-8b --cluster dgx-h100 --num-gpus 8 \
  --seq-len 4096 --global-batch 64 --tp 2 --pp 2 --recompute selective "$@"
