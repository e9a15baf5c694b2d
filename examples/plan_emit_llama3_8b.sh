#!/usr/bin/env bash
# Plan Llama-3-8B on two DGX H100 nodes (hosts gpu-a, gpu-b) and write launch files for both frameworks:
# megatron_args.txt, launch_megatron.sh/.sbatch, placement.txt, ds_config.json, hostfile, launch_deepspeed.sh/.sbatch,
# MANIFEST. (--emit all searches each framework's own space; MANIFEST says which plan each file set holds.)
# Files go to $EMIT_OUT or a fresh temp folder.
set -euo pipefail
out="${EMIT_OUT:-$(mktemp -d)}"
configurator plan --model llama3-8b --cluster dgx-h100 --num-gpus 16 --seq-len 4096 --global-batch 64 \
  --top 3 --emit all --out "$out" --force --hosts gpu-a,gpu-b "$@"
