#!/usr/bin/env bash
# Search, then re-estimate the exact plan the search chose (knobs, recompute modules and placement included) from
# its JSON: `--plan-json` takes `plan --json` output (its best plan), one `plans` entry (jq '.plans[1]') or an
# `estimate --json` object. Plan options given beside it replace the file's fields (e.g. --micro-batch 1), and
# `emit --plan-json FILE --framework megatron --out DIR` writes the files `plan --emit megatron` would.
set -euo pipefail
plan_file="$(mktemp --suffix=.json)"
trap 'rm -f "$plan_file"' EXIT
configurator plan --model llama3-8b --cluster dgx-h100 --num-gpus 8 --seq-len 4096 --global-batch 64 --top 1 \
  --json > "$plan_file"
configurator estimate --model llama3-8b --cluster dgx-h100 --num-gpus 8 --seq-len 4096 --global-batch 64 \
  --plan-json "$plan_file" "$@"
