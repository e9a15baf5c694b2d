#!/usr/bin/env bash
# Plan on a cluster profile whose GPU is given inline (examples/profiles/inline_gpu_mi300x.json: an MI300X
# at a power cap, its own peaks): the same strict checks as a preset; the GPU line says which constants it uses.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
configurator plan --model llama3-8b --cluster "$here/profiles/inline_gpu_mi300x.json" --seq-len 4096 \
  --global-batch 64 --top 3 --time-budget 5 "$@"
