"""Megatron-LM launch files for a plan: ``megatron_args.txt``, ``launch_megatron.sh``, ``placement.txt``.

``megatron_args.txt`` holds the ``pretrain_gpt.py`` arguments for the model shape and the whole plan
(shell words, nothing else); data, tokenizer, schedule and checkpoint arguments are the user's and
go in ``USER_ARGS`` of the launch script. Flags follow Megatron-LM's ``megatron/training/arguments.py``
and Megatron-Core's config dataclasses (checked in CI by Megatron's own ``parse_args`` and
``validate_args``, see ``tests/validators/``). Traps handled:

* virtual pipeline stages: ``--num-layers-per-virtual-pipeline-stage`` when even, otherwise
  ``--pipeline-model-parallel-layout`` (one ``|``-separated entry per virtual stage, embedding first,
  loss last); there is no ``--virtual-pipeline-model-parallel-size`` flag;
* MoE with expert-TP > 1 needs ``--disable-bias-linear``; dense layers before the first MoE layer are a
  ``--moe-layer-freq`` list;
* TP or CP > 1 before Blackwell: Megatron asserts ``CUDA_DEVICE_MAX_CONNECTIONS=1``, so the launch script
  exports it — except with Megatron-FSDP, which asserts it is not 1 (found by Megatron's validator);
* offload: ``--optimizer-cpu-offload --optimizer-offload-fraction F --use-precision-aware-optimizer``
  (the fraction's CLI default is 1.0, so it is always written) with ``--overlap-cpu-optimizer-d2h-h2d``;
* ZeRO-2/3 run as Megatron-FSDP (``--use-megatron-fsdp --data-parallel-sharding-strategy``).

The launch script uses torchrun with static rendezvous (``--nnodes --node-rank --master-addr
--master-port --nproc-per-node``): with c10d rendezvous node ranks come from sorting host addresses,
so only static node ranks realise a placement. Rank = node_rank * nproc + local_rank; the node order
and each node's ``CUDA_VISIBLE_DEVICES`` come from the placement.
"""

from __future__ import annotations

from configurator.placement import Placement, groups
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

PRE_BLACKWELL = ("ampere", "hopper")


def _layout(plan: Plan, model: ModelSpec) -> str:
    """``--pipeline-model-parallel-layout`` for an explicit split (virtual stages in model order)."""
    parts = []
    counts = plan.virtual_stage_layers(model)
    for v, n in enumerate(counts):
        items = [] if n == 0 else [f"t*{n}"]
        if v == 0:
            items.insert(0, "E")
        if v == len(counts) - 1:
            items.append("L")
        parts.append(",".join(items))
    return "|".join(parts)


def megatron_args(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan) -> list[str]:
    a: list[str] = []

    def flag(name: str, value: object = None) -> None:
        a.append(name)
        if value is not None:
            a.append(str(value))

    # ----- model shape -----
    flag("--num-layers", model.num_layers)
    flag("--hidden-size", model.hidden_size)
    flag("--ffn-hidden-size", model.ffn_hidden_size)
    flag("--num-attention-heads", model.num_attention_heads)
    if model.attention == "gqa":
        flag("--group-query-attention")
        flag("--num-query-groups", model.num_kv_heads)
    if model.head_dim and model.attention != "mla":
        flag("--kv-channels", model.head_dim)
    flag("--seq-length", job.seq_len)
    flag("--max-position-embeddings", max(job.seq_len, model.learned_position_embeddings))
    flag("--position-embedding-type", "learned_absolute" if model.learned_position_embeddings else "rope")
    flag("--normalization", "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm")
    if model.mlp == "swiglu":
        flag("--swiglu")
    if not model.linear_bias or (model.is_moe and plan.etp > 1):
        flag("--disable-bias-linear")
    if not model.tied_embeddings:
        flag("--untie-embeddings-and-output-weights")
    if model.qk_norm:
        flag("--qk-layernorm")
    if not model.dropout:
        flag("--attention-dropout", 0.0)
        flag("--hidden-dropout", 0.0)
    if model.attention == "mla":
        flag("--multi-latent-attention")
        if model.q_lora_rank:
            flag("--q-lora-rank", model.q_lora_rank)
        flag("--kv-lora-rank", model.kv_lora_rank)
        flag("--qk-head-dim", model.qk_nope_head_dim)
        flag("--qk-pos-emb-head-dim", model.qk_rope_head_dim)
        flag("--v-head-dim", model.v_head_dim)
    if model.is_moe:
        flag("--num-experts", model.num_experts)
        flag("--moe-router-topk", model.moe_topk)
        flag("--moe-ffn-hidden-size", model.moe_ffn_hidden_size)
        shared = model.shared_expert_ffn_hidden_size or model.num_shared_experts * model.moe_ffn_hidden_size
        if shared:
            flag("--moe-shared-expert-intermediate-size", shared)
        if model.first_dense_layers or model.moe_layer_freq > 1:
            pattern = [1 if model.layer_is_moe(i) else 0 for i in range(model.num_layers)]
            flag("--moe-layer-freq", "[" + ",".join(map(str, pattern)) + "]")
        flag("--moe-token-dispatcher-type", "alltoall")
        flag("--moe-grouped-gemm")
        flag("--expert-model-parallel-size", plan.ep)
        flag("--expert-tensor-parallel-size", plan.etp)
    # ----- parallelism -----
    flag("--tensor-model-parallel-size", plan.tp)
    flag("--pipeline-model-parallel-size", plan.pp)
    if plan.pipeline_layers:
        flag("--pipeline-model-parallel-layout", _layout(plan, model))
    elif plan.vpp > 1:
        flag("--num-layers-per-virtual-pipeline-stage", model.num_layers // (plan.pp * plan.vpp))
    if plan.sp:
        flag("--sequence-parallel")
    if plan.cp > 1:
        flag("--context-parallel-size", plan.cp)
        flag("--cp-comm-type", "p2p")
    if plan.sharding in ("distopt", "zero1"):
        flag("--use-distributed-optimizer")
        flag("--overlap-grad-reduce")
        flag("--overlap-param-gather")
    elif plan.sharding in ("zero2", "zero3"):
        flag("--use-megatron-fsdp")
        flag("--data-parallel-sharding-strategy", "optim_grads" if plan.sharding == "zero2" else "optim_grads_params")
        flag("--ckpt-format", "fsdp_dtensor")  # Megatron-FSDP asserts this checkpoint format
        flag("--overlap-grad-reduce")
        flag("--overlap-param-gather")
    if plan.recompute == "selective":
        flag("--recompute-granularity", "selective")
        if plan.recompute_modules:  # Megatron-Core's --recompute-modules (nargs='*'); the memory model relies on them
            flag("--recompute-modules")
            a.extend(plan.recompute_modules)
    elif plan.recompute == "full":
        flag("--recompute-granularity", "full")
        if plan.recompute_num_layers:
            flag("--recompute-method", "block")
            flag("--recompute-num-layers", plan.recompute_num_layers)
        else:
            flag("--recompute-method", "uniform")
            flag("--recompute-num-layers", 1)
    flag("--micro-batch-size", plan.micro_batch)
    flag("--global-batch-size", job.global_batch)
    # ----- precision -----
    if job.precision == "fp16":
        flag("--fp16")
    else:
        flag("--bf16")
    if job.precision == "fp8":
        flag("--fp8-format", "hybrid")
    elif job.precision == "fp4":
        flag("--fp4-format", "e2m1")
    # ----- optimizer offload -----
    if plan.offload > 0:
        flag("--optimizer-cpu-offload")
        flag("--optimizer-offload-fraction", f"{plan.offload:g}")
        flag("--use-precision-aware-optimizer")
        flag("--overlap-cpu-optimizer-d2h-h2d")
    return a


def needs_single_connection(cluster: ClusterSpec, plan: Plan) -> bool:
    """Megatron asserts CUDA_DEVICE_MAX_CONNECTIONS=1 with TP or CP > 1 before Blackwell, except under
    Megatron-FSDP (ZeRO-2/3), which asserts the opposite (it only warns about the TP/CP combination)."""
    fsdp = plan.sharding in ("zero2", "zero3")
    return (plan.tp > 1 or plan.cp > 1) and cluster.gpu.family in PRE_BLACKWELL and not fsdp


def user_args(model: ModelSpec) -> list[str]:
    """Placeholders for what the plan does not decide (data, tokenizer, schedule); replace them."""
    return ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(model.vocab_size),
            "--train-iters", "100", "--lr", "3e-4", "--min-lr", "3e-5", "--lr-decay-style", "cosine",
            "--lr-warmup-iters", "10", "--weight-decay", "0.1", "--clip-grad", "1.0", "--log-interval", "1"]


def hosts(cluster: ClusterSpec, placement: Placement) -> list[str]:
    """Host of each job slot, in placement order (measured profiles name them; presets get node00...)."""
    names = [n.host for n in cluster.nodes] if cluster.nodes else [f"node{i:02d}" for i in range(cluster.num_nodes)]
    return [names[i] for i in placement.node_order]


def gpu_orders(cluster: ClusterSpec, placement: Placement) -> list[list[int]]:
    return [list(o) for o in placement.gpu_order] or [list(range(cluster.gpus_per_node))] * cluster.num_nodes


def launch_script(model: ModelSpec, cluster: ClusterSpec, plan: Plan, placement: Placement) -> str:
    host_list = hosts(cluster, placement)
    orders = gpu_orders(cluster, placement)
    lines = [
        "#!/usr/bin/env bash",
        "# Per-node launch of Megatron-LM's pretrain_gpt.py for this plan (written by configurator).",
        "# Run on every node:  bash launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]",
        "# NODE_RANK is the node's position in HOSTS below (the placement's node order); static ranks, not",
        "# c10d rendezvous, because c10d orders nodes by address and would undo the placement.",
        "# Global rank = NODE_RANK * NPROC + local rank; groups follow Megatron's tp-cp-ep-dp-pp order",
        "# (leftmost fastest), see placement.txt.",
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "$0")" && pwd)"',
        f"HOSTS=({' '.join(host_list)})",
        'NODE_RANK="${1:?usage: launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]}"',
        'MASTER_ADDR="${2:-${HOSTS[0]}}"',
        'MASTER_PORT="${3:-6000}"',
        f"NNODES={cluster.num_nodes}",
        f"NPROC={cluster.gpus_per_node}",
        'MEGATRON_DIR="${MEGATRON_DIR:-$PWD/Megatron-LM}"',
        "GPU_ORDERS=(" + " ".join('"' + ",".join(map(str, o)) + '"' for o in orders) + ")",
        'export CUDA_VISIBLE_DEVICES="${GPU_ORDERS[$NODE_RANK]}"',
    ]
    if needs_single_connection(cluster, plan):
        lines.append("export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with TP/CP > 1 before Blackwell")
    lines += [
        "# Data, tokenizer and schedule are yours: replace these placeholders.",
        'USER_ARGS=(' + " ".join(user_args(model)) + ')',
        'read -r -a PLAN_ARGS < <(tr "\\n" " " < "$HERE/megatron_args.txt")',
        'exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \\',
        '  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \\',
        '  "$MEGATRON_DIR/pretrain_gpt.py" "${PLAN_ARGS[@]}" "${USER_ARGS[@]}"',
    ]
    return "\n".join(lines) + "\n"


def placement_text(cluster: ClusterSpec, plan: Plan, placement: Placement) -> str:
    host_list = hosts(cluster, placement)
    orders = gpu_orders(cluster, placement)
    g = cluster.gpus_per_node
    lines = ["# Placement of the plan's ranks (written by configurator).",
             f"# {plan.describe()}; world size {plan.world_size} = {cluster.num_nodes} nodes x {g} GPUs",
             "# rank r runs on job slot r // GPUs-per-node (node order below) at local index r % GPUs-per-node,",
             "# which is the physical GPU listed in that node's GPU order (CUDA_VISIBLE_DEVICES).",
             "", "[node order]"]
    for slot, host in enumerate(host_list):
        lines.append(f"node_rank {slot}: {host}  gpus {','.join(map(str, orders[slot]))}  ranks {slot * g}-{slot * g + g - 1}")
    for kind in ("tp", "cp", "dp", "pp", "ep", "etp"):
        rows = groups(plan, kind)
        if rows.shape[1] == 1:
            continue
        lines += ["", f"[{kind} groups] ({rows.shape[0]} of size {rows.shape[1]})"]
        shown = rows[:16]
        for row in shown.tolist():
            lines.append(" ".join(f"{r}@{host_list[r // g]}:{orders[r // g][r % g]}" for r in row))
        if rows.shape[0] > len(shown):
            lines.append(f"... {rows.shape[0] - len(shown)} more")
    return "\n".join(lines) + "\n"


__all__ = ["launch_script", "megatron_args", "needs_single_connection", "placement_text", "user_args"]
