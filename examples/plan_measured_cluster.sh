#!/usr/bin/env bash
# Plan on a measured cluster profile (probe schema) where one node's links are slow: the placement search
# moves the heavy pipeline/data-parallel traffic off node 3 and reports the gain over Megatron's order.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
configurator plan --model llama3-8b --cluster "$here/profiles/measured_8_nodes.json" --seq-len 8192 \
  --global-batch 256 --top 3 "$@"
