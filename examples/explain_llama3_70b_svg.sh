#!/usr/bin/env bash
# Where a plan's step goes, as a picture: the simulated pipeline schedule (forward/backward per micro-batch,
# exposed communication, bubble, DP tail) and memory per stage against capacity. SVG goes to $SVG_OUT or a
# fresh temp file (open it in a browser).
set -euo pipefail
svg="${SVG_OUT:-$(mktemp -d)/step.svg}"
configurator explain --model llama3-70b --cluster dgx-h100 --num-gpus 64 --seq-len 8192 --global-batch 64 \
  --tp 4 --pp 4 --vpp 5 --cp 2 --svg "$svg" --force "$@"
