#!/usr/bin/env bash
# Per-node launch of Megatron-LM's pretrain_gpt.py for this plan (written by configurator).
#   bare metal: on every node   bash launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]
#   Slurm:      sbatch launch_megatron.sbatch   (srun runs this once per node)
# Static node ranks, not c10d rendezvous: c10d orders nodes by address and would undo the placement.
# Global rank = NODE_RANK * NPROC + local rank; groups follow Megatron's tp-cp-ep-dp-pp order
# (leftmost fastest), see placement.txt.
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
die() { echo "launch_megatron.sh: error: $*" >&2; exit 2; }
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  [ "${#NODES[@]}" -eq "$NNODES" ] || die "Slurm allocated ${#NODES[@]} nodes ($SLURM_JOB_NODELIST); the plan needs $NNODES (sbatch --nodes=$NNODES)"
  NODE_ID="${SLURM_NODEID:-}"
  case "$NODE_ID" in ""|*[!0-9]*) die "SLURM_NODEID='$NODE_ID' is not a node index: start this script with srun (see the .sbatch file)";; esac
  NODE_RANK=""
  for r in "${!NODE_ORDER[@]}"; do [ "${NODE_ORDER[$r]}" != "$((10#$NODE_ID))" ] || NODE_RANK=$r; done
  [ -n "$NODE_RANK" ] || die "SLURM_NODEID=$NODE_ID is not a node of this $NNODES-node plan"
  MASTER_ADDR="${MASTER_ADDR:-${NODES[${NODE_ORDER[0]}]}}"
  MASTER_PORT="${MASTER_PORT:-6000}"
else
  [ "$#" -ge 1 ] || die "usage: launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT] (or run it under Slurm)"
  NODE_RANK="$1"
  case "$NODE_RANK" in ""|*[!0-9]*) die "NODE_RANK='$NODE_RANK' must be an integer in 0..$((NNODES-1))";; esac
  NODE_RANK=$((10#$NODE_RANK))
  [ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK=$NODE_RANK is out of range: this plan has $NNODES nodes (0..$((NNODES-1)))"
  if [ "$#" -ge 2 ]; then MASTER_ADDR="$2"
  elif [ "${#NODES[@]}" -gt 0 ]; then MASTER_ADDR="${NODES[${NODE_ORDER[0]}]}"
  else die "MASTER_ADDR: no host names were given when emitting (--hosts/--hostfile); pass the address of node rank 0 as the second argument"; fi
  MASTER_PORT="${3:-6000}"
fi
MEGATRON_DIR="${MEGATRON_DIR:-$PWD/Megatron-LM}"
[ -f "$MEGATRON_DIR/pretrain_gpt.py" ] || die "MEGATRON_DIR=$MEGATRON_DIR has no pretrain_gpt.py (set MEGATRON_DIR to a Megatron-LM checkout)"
export CUDA_VISIBLE_DEVICES="${GPU_ORDERS[$NODE_RANK]}"
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with TP/CP > 1 before Blackwell
# Data, tokenizer, schedule and checkpoints are yours: replace these placeholders, e.g.
#   --data-path PREFIX --tokenizer-type HuggingFaceTokenizer --tokenizer-model NAME_OR_DIR
#   --save CKPT_DIR --load CKPT_DIR --save-interval N --train-iters N --lr ...
USER_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 32000 --train-iters 100 --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 10 --weight-decay 0.1 --clip-grad 1.0 --log-interval 1)
mapfile -t PLAN_ARGS < "$HERE/megatron_args.txt"  # one word per line
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  "$MEGATRON_DIR/pretrain_gpt.py" "${PLAN_ARGS[@]}" "${USER_ARGS[@]}"
