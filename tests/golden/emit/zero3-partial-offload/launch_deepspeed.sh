#!/usr/bin/env bash
# DeepSpeed launch for this plan (written by configurator). Run once, on the first host of hostfile.
# The hostfile lists nodes in placement order and --include pins each node's GPU order, so the
# launcher's ranks (hostfile order x local GPU order) realise the placement.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TRAIN_SCRIPT="${TRAIN_SCRIPT:-train.py}"  # your DeepSpeed training script
exec deepspeed --hostfile "$HERE/hostfile" --include "node00:0,1,2,3,4,5,6,7@node01:0,1,2,3,4,5,6,7@node02:0,1,2,3,4,5,6,7@node03:0,1,2,3,4,5,6,7@node04:0,1,2,3,4,5,6,7@node05:0,1,2,3,4,5,6,7@node06:0,1,2,3,4,5,6,7@node07:0,1,2,3,4,5,6,7" --master_addr "node00" \
  "$TRAIN_SCRIPT" --deepspeed --deepspeed_config "$HERE/ds_config.json" "$@"
