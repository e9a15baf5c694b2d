#!/usr/bin/env bash
# DeepSpeed launch for this plan (written by configurator). Run once, on the first host:
#   bare metal: bash launch_deepspeed.sh [TRAINING-SCRIPT ARGS...]   (hosts from --hosts/--hostfile)
#   Slurm:      sbatch launch_deepspeed.sbatch   (hosts from SLURM_JOB_NODELIST)
# The host list is written in placement order and --include pins each node's GPU order, so the
# launcher's ranks (host order x local GPU order) realise the placement. DeepSpeed reaches the
# other nodes with pdsh/ssh (passwordless ssh between the nodes is needed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES=8
NPROC=8
# Node rank r (ranks r*NPROC ... r*NPROC+NPROC-1) runs on node NODE_ORDER[r] of NODES (the placement).
NODE_ORDER=(0 1 2 3 4 5 6 7)
GPU_ORDERS=("0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7")
# The cluster's nodes in its profile's order (from --hosts/--hostfile or a measured profile);
# under Slurm they come from SLURM_JOB_NODELIST instead.
NODES=()
die() { echo "launch_deepspeed.sh: error: $*" >&2; exit 2; }
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  [ "${#NODES[@]}" -eq "$NNODES" ] || die "Slurm allocated ${#NODES[@]} nodes ($SLURM_JOB_NODELIST); the plan needs $NNODES (sbatch --nodes=$NNODES)"
else
  [ "${#NODES[@]}" -gt 0 ] || die "no host names: emit with --hosts or --hostfile, or run under Slurm"
fi
MASTER_ADDR="${MASTER_ADDR:-${NODES[${NODE_ORDER[0]}]}}"
HOSTFILE="$HERE/hostfile"
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/configurator-hostfile.XXXXXX")"
  for r in "${!NODE_ORDER[@]}"; do echo "${NODES[${NODE_ORDER[$r]}]} slots=$NPROC"; done > "$HOSTFILE"
fi
INCLUDE=""
for r in "${!NODE_ORDER[@]}"; do INCLUDE+="${INCLUDE:+@}${NODES[${NODE_ORDER[$r]}]}:${GPU_ORDERS[$r]}"; done
TRAIN_SCRIPT="${TRAIN_SCRIPT:-train.py}"  # your DeepSpeed training script (data, tokenizer, checkpoints)
exec deepspeed --hostfile "$HOSTFILE" --include "$INCLUDE" --master_addr "$MASTER_ADDR" \
  "$TRAIN_SCRIPT" --deepspeed --deepspeed_config "$HERE/ds_config.json" "$@"
