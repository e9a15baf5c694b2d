#!/usr/bin/env bash
# Plan Llama-3-8B on two DGX H100 nodes and write the best plan's launch files for both frameworks:
# megatron_args.txt, launch_megatron.sh, placement.txt, ds_config.json, hostfile, launch_deepspeed.sh.
# (--emit all searches only plans DeepSpeed can also run.) Files go to $EMIT_OUT or a fresh temp folder.
set -euo pipefail
out="${EMIT_OUT:-$(mktemp -d)}"
configurator plan --model llama3-8b --cluster dgx-h100 --num-gpus 16 --seq-len 4096 --global-batch 64 \
  --top 3 --emit all --out "$out" --force "$@"
