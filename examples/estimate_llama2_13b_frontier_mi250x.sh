#!/usr/bin/env bash
# AMD Instinct MI250X (Frontier node: 8 GCDs of 64 GB): Llama-2-13B on 4 nodes, TP4 PP2 over Slingshot
set -euo pipefail
configurator estimate --model llama2-13b --cluster frontier-mi250x --num-gpus 32 --seq-len 4096 \
  --global-batch 128 --tp 4 --pp 2 --recompute selective "$@"
