#!/usr/bin/env bash
# --gpu-spec FILE replaces a cluster's GPU with a user's spec (examples/profiles/gpu_spec_mi300x_capped.json)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
configurator estimate --model llama3-8b --cluster mi300x-roce400 --num-gpus 8 \
  --gpu-spec "$here/profiles/gpu_spec_mi300x_capped.json" --seq-len 4096 --global-batch 64 --tp 1 --pp 1 "$@"
