#!/usr/bin/env bash
# Per-node launch of Megatron-LM's pretrain_gpt.py for this plan (written by configurator).
# Run on every node:  bash launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]
# NODE_RANK is the node's position in HOSTS below (the placement's node order); static ranks, not
# c10d rendezvous, because c10d orders nodes by address and would undo the placement.
# Global rank = NODE_RANK * NPROC + local rank; groups follow Megatron's tp-cp-ep-dp-pp order
# (leftmost fastest), see placement.txt.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
HOSTS=(node00 node01 node02 node03 node04 node05 node06 node07)
NODE_RANK="${1:?usage: launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]}"
MASTER_ADDR="${2:-${HOSTS[0]}}"
MASTER_PORT="${3:-6000}"
NNODES=8
NPROC=8
MEGATRON_DIR="${MEGATRON_DIR:-$PWD/Megatron-LM}"
GPU_ORDERS=("0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7" "0,1,2,3,4,5,6,7")
export CUDA_VISIBLE_DEVICES="${GPU_ORDERS[$NODE_RANK]}"
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with TP/CP > 1 before Blackwell
# Data, tokenizer and schedule are yours: replace these placeholders.
USER_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 32000 --train-iters 100 --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 10 --weight-decay 0.1 --clip-grad 1.0 --log-interval 1)
read -r -a PLAN_ARGS < <(tr "\n" " " < "$HERE/megatron_args.txt")
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  "$MEGATRON_DIR/pretrain_gpt.py" "${PLAN_ARGS[@]}" "${USER_ARGS[@]}"
