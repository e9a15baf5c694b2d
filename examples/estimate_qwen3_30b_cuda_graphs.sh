#!/usr/bin/env bash
# Qwen3-30B-A3B on 8 GPUs of a GB200 NVL72 at micro-batch 2, with Transformer Engine's per-layer CUDA graphs over
# each layer's attention, router and dispatcher preprocessing: the Grace host dispatches eager ops at 2.75x a DGX
# H100's, so eager small micro-batches are launch-bound; the graphs replay each captured part as one launch
# (`time.cuda_graph_launch_saved_s`) and their pool costs memory (`memory.breakdown_gib.cuda_graphs`). `emit` takes
# the same option (Megatron: --cuda-graph-impl transformer_engine --cuda-graph-modules attn moe_router
# moe_preprocess). Compare: --no-cuda-graphs.
set -euo pipefail
configurator estimate --model qwen3-30b-a3b --cluster gb200-nvl72 --num-gpus 8 --seq-len 4096 --global-batch 256 \
  --precision fp8 --ep 8 --micro-batch 2 --cuda-graphs "$@"
