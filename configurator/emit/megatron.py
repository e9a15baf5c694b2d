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
* optimizer offload only with the distributed optimizer: Megatron-FSDP's offload fails while the optimizer is
  built in Megatron-Core 0.19 (``search.space.offload_runs``), so such a plan is refused by field;
* ZeRO-2/3 run as Megatron-FSDP (``--use-megatron-fsdp --data-parallel-sharding-strategy``) with
  ``--grad-reduce-in-bf16``, one of the flags Megatron-FSDP's user guide recommends; in Megatron-Core 0.19.2 its
  gradients are bf16 anyway (``--megatron-fsdp-main-grads-dtype auto``: the compute dtype), so they cross the
  network in bf16 (cost.json ``sharded_grad_reduce_bytes``) and are held so (memory.json ``sharded_grad_bytes``). Megatron-FSDP
  keeps Megatron's fused gradient accumulation (the wgrad GEMM writes into the gradient buffer), for which
  Megatron-Core 0.19's adapter asserts Transformer Engine >= 2.10 when it builds the model, minutes into
  the job: the launch script reads the node's Transformer Engine version first and, below 2.10, adds
  ``--no-gradient-accumulation-fusion`` (the path Megatron-FSDP's user guide lists), saying so
  (``FSDP_TE_FUSED``). And ``--init-model-with-meta-device``, as NVIDIA's Megatron-Bridge performance scripts set
  for every Megatron-FSDP run (``_set_megatron_fsdp_overrides``) and its user guide recommends: without it
  ``get_model`` builds the rank's whole model partition in bf16 on the GPU before Megatron-FSDP shards it, a
  transient of 2 bytes per parameter beside the new buffers that the memory model (steady state) does not count and
  that a ZeRO-3 plan chosen to fit (Llama-3-70B at TP1: 130 GiB) cannot hold; with it the Transformer Engine layers
  are built on the meta device and materialised layer by layer into the sharded buffers.

The launch script uses torchrun with static rendezvous (``--nnodes --node-rank --master-addr
--master-port --nproc-per-node``): with c10d rendezvous node ranks come from sorting host addresses,
so only static node ranks realise a placement. Rank = node_rank * nproc + local_rank; the node order
and each node's ``CUDA_VISIBLE_DEVICES`` come from the placement.
"""

from __future__ import annotations

from typing import Callable

from configurator.cost.launch import plan_graph_scopes
from configurator.emit.shell import known_hosts, node_prologue
from configurator.ep_buffers import DEEPEP_GROUP_SIZES, flex_backend, flex_group_supported
from configurator.errors import InputError
from configurator.placement import Placement, groups
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import MEGATRON_FSDP_SHARDINGS, Plan

PRE_BLACKWELL = ("ampere", "hopper")
EXPRESSIBLE_FEATURES = {"shared_expert_gate": "--moe-shared-expert-gate"}
"""ModelSpec ``features`` Megatron can express (Qwen2-MoE's sigmoid gate on the shared expert)."""


def _layout(plan: Plan, model: ModelSpec) -> str:
    """``--pipeline-model-parallel-layout`` for an explicit split (virtual stages in model order)."""
    parts = []
    counts = plan.virtual_stage_layers(model)
    for v, n in enumerate(counts):
        items = [] if n == 0 else [f"t*{n}"]
        if v == 0:
            items.insert(0, "E")
        if v == len(counts) - 1:
            if model.mtp_layers:  # Megatron: MTP modules sit in the last virtual stage, before the loss
                items.append(f"m*{model.mtp_layers}" if model.mtp_layers > 1 else "m")
            items.append("L")
        parts.append(",".join(items))
    return "|".join(parts)


def _refuse(field: str, value: object, why: str) -> None:
    raise InputError(f"model.{field}", value, f"Megatron-LM's pretrain_gpt.py arguments cannot express {why}; "
                     "refusing rather than emitting a different model")


def _rope_args(model: ModelSpec, flag: Callable[..., None]) -> None:
    """Positions: learned table, or rotary with base, partial rotation and scaling as Megatron spells them."""
    if model.learned_position_embeddings:
        flag("--position-embedding-type", "learned_absolute")
        return
    if float(model.rope_base) != int(model.rope_base):
        _refuse("rope_base", model.rope_base, "a non-integer rotary base (--rotary-base is an int)")
    scaling = model.rope_scaling
    mla = model.attention == "mla"
    flag("--position-embedding-type", "yarn" if scaling == "yarn" and not mla else "rope")
    flag("--rotary-base", int(model.rope_base))
    if model.rope_percent != 1.0:
        flag("--rotary-percent", f"{model.rope_percent:g}")
    if mla:  # MLA's rope_type defaults to yarn in Megatron-Core: always say which
        flag("--rope-type", "yarn" if scaling == "yarn" else "rope")
    if scaling == "llama3":
        if model.rope_original_max_positions != 8192:
            _refuse("rope_original_max_positions", model.rope_original_max_positions,
                    "Llama-3 rope scaling with an original context other than 8192 (fixed in Megatron-Core)")
        flag("--use-rope-scaling")
        flag("--rope-scaling-factor", f"{model.rope_scaling_factor:g}")
    elif scaling == "yarn":
        flag("--rotary-scaling-factor", f"{model.rope_scaling_factor:g}")
        flag("--mscale", f"{model.rope_mscale:g}")
        flag("--mscale-all-dim", f"{model.rope_mscale_all_dim:g}")
        if mla:
            if model.rope_original_max_positions not in (0, 4096):
                _refuse("rope_original_max_positions", model.rope_original_max_positions,
                        "an MLA YaRN original context other than 4096 (MLATransformerConfig's default, no flag)")
        else:
            flag("--yarn-original-max-position-embeddings", model.rope_original_max_positions or 4096)
    elif scaling == "linear":
        if float(model.rope_scaling_factor) != int(model.rope_scaling_factor):
            _refuse("rope_scaling_factor", model.rope_scaling_factor, "a non-integer linear rope interpolation")
        flag("--rotary-seq-len-interpolation-factor", int(model.rope_scaling_factor))


def model_args(model: ModelSpec, job: JobSpec, plan: Plan) -> list[str]:
    """The network itself: every ModelSpec field as Megatron spells it, or an InputError naming the field."""
    a: list[str] = []

    def flag(name: str, value: object = None) -> None:
        a.append(name)
        if value is not None:
            a.append(str(value))

    for feature in model.features:
        if feature not in EXPRESSIBLE_FEATURES:
            _refuse("features", feature, f"'{feature}'")
    if model.norm_placement != "pre":
        _refuse("norm_placement", model.norm_placement, f"{model.norm_placement}-norm layers (only pre-norm)")
    if model.qk_norm_full_width:
        _refuse("qk_norm_full_width", True, "a query/key norm across all heads (--qk-layernorm is per head)")
    if model.activation == "gelu_tanh":
        _refuse("activation", model.activation, "a gated GELU-tanh MLP (GeGLU; --quick-geglu is a different function)")
    if model.moe_router_score == "sigmoid" and not model.moe_norm_topk_prob and model.moe_topk > 1:
        _refuse("moe_norm_topk_prob", False, "unnormalised sigmoid top-k weights (Megatron normalises them)")
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
    _rope_args(model, flag)
    flag("--normalization", "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm")
    flag("--norm-epsilon", f"{model.norm_eps:g}")
    if model.norm_zero_centered:
        flag("--apply-layernorm-1p")
    if model.mlp == "swiglu":
        flag("--swiglu")
    elif model.mlp == "relu2":
        flag("--squared-relu")
    if not model.linear_bias or (model.is_moe and plan.etp > 1):
        if model.linear_bias:
            _refuse("linear_bias", True, "linear biases with expert-tensor parallelism > 1 (Megatron requires "
                    "--disable-bias-linear there)")
        flag("--disable-bias-linear")
        if model.qkv_bias:
            flag("--add-qkv-bias")
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
        flag("--moe-router-score-function", model.moe_router_score)
        if not model.moe_norm_topk_prob:
            flag("--moe-router-pre-softmax")
        if model.moe_router_expert_bias:
            flag("--moe-router-enable-expert-bias")
        if model.moe_router_num_groups:
            flag("--moe-router-num-groups", model.moe_router_num_groups)
            flag("--moe-router-group-topk", model.moe_router_group_topk)
        if model.moe_routed_scaling_factor != 1.0:
            flag("--moe-router-topk-scaling-factor", f"{model.moe_routed_scaling_factor:g}")
        flag("--moe-router-load-balancing-type", model.moe_aux_loss_type if model.moe_aux_loss_coeff else "none")
        if model.moe_aux_loss_coeff:
            flag("--moe-aux-loss-coeff", f"{model.moe_aux_loss_coeff:g}")
        # The plan's dispatcher; unset = the runtime's default, alltoall (profiles/cost.json).
        flag("--moe-token-dispatcher-type", "flex" if plan.ep_dispatcher == "flex" else "alltoall")
        flag("--moe-grouped-gemm")
    if model.mtp_layers:
        flag("--mtp-num-layers", model.mtp_layers)
    for feature in model.features:
        flag(EXPRESSIBLE_FEATURES[feature])
    return a


def hierarchical_cp_sizes(cluster: ClusterSpec, plan: Plan) -> tuple[int, int]:
    """a2a+p2p: all-to-all inside the node (the largest divisor of cp that fits next to tp on one node),
    ring (p2p) across the rest."""
    inner = max(d for d in range(1, plan.cp + 1) if plan.cp % d == 0 and plan.tp * d <= cluster.gpus_per_node)
    return inner, plan.cp // inner


def megatron_args(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: Plan) -> list[str]:
    a: list[str] = model_args(model, job, plan)

    def flag(name: str, *values: object) -> None:
        a.append(name)
        a.extend(str(v) for v in values)

    if model.is_moe:
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
        if plan.cp_comm is not None:  # None: Megatron's default (p2p)
            flag("--cp-comm-type", plan.cp_comm)
            if plan.cp_comm == "a2a+p2p":
                flag("--hierarchical-context-parallel-sizes", *hierarchical_cp_sizes(cluster, plan))
    if plan.tp_overlap:
        # Needs Transformer Engine built with userbuffers (NGC PyTorch containers) and sequence parallel.
        flag("--tp-comm-overlap")
    if plan.ep_overlap:
        flag("--overlap-moe-expert-parallel-comm")
    if plan.cuda_graphs:
        # Transformer Engine's make_graphed_callables per layer over these scopes (cost/launch.py
        # plan_graph_scopes); Megatron turns on the TE RNG tracker graphs need, said here rather than warned.
        flag("--cuda-graph-impl", "transformer_engine")
        flag("--cuda-graph-modules", *plan_graph_scopes(model.is_moe))
        flag("--te-rng-tracker")
    if model.is_moe and plan.ep_dispatcher == "flex":
        backend = flex_backend(cluster)
        if not flex_group_supported(backend, plan.ep * plan.etp):
            raise InputError("plan.ep", plan.ep, f"DeepEP (the flex dispatcher's backend on this cluster) runs groups "
                             f"of {sorted(DEEPEP_GROUP_SIZES)} expert-TP x EP ranks and asserts on "
                             f"{plan.ep * plan.etp}; use ep_dispatcher=alltoall or another EP degree")
        flag("--moe-flex-dispatcher-backend", backend)
    if plan.sharding in ("distopt", "zero1"):
        flag("--use-distributed-optimizer")
        flag("--overlap-grad-reduce")
        flag("--overlap-param-gather")
    elif plan.sharding in MEGATRON_FSDP_SHARDINGS:
        flag("--use-megatron-fsdp")
        flag("--data-parallel-sharding-strategy", "optim_grads" if plan.sharding == "zero2" else "optim_grads_params")
        if plan.sharding == "hsdp":
            # Megatron-FSDP's HSDP: shard inside groups, replicate across (dp*cp / shard_group) instances.
            flag("--num-distributed-optimizer-instances", plan.dp * plan.cp // plan.shard_group)
            flag("--outer-dp-sharding-strategy", "no_shard")
        flag("--ckpt-format", "fsdp_dtensor")  # Megatron-FSDP asserts this checkpoint format
        flag("--init-model-with-meta-device")  # no whole unsharded model on the GPU at start-up (docstring)
        if job.precision != "fp16":
            # Megatron-FSDP's user guide recommends it (0.19.2 reduces in bf16 by default: sharded_grad_reduce_bytes).
            flag("--grad-reduce-in-bf16")
        flag("--overlap-grad-reduce")
        flag("--overlap-param-gather")
    if plan.recompute == "selective":
        flag("--recompute-granularity", "selective")
        if plan.recompute_modules:
            flag("--recompute-modules", *plan.recompute_modules)
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
    if plan.offload > 0 and plan.sharding in MEGATRON_FSDP_SHARDINGS:
        raise InputError("plan.offload", f"{plan.offload:g}", f"Megatron-LM cannot offload the optimizer under "
                         f"Megatron-FSDP (sharding {plan.sharding}): Megatron-Core 0.19's hybrid CPU optimizer fails "
                         "on its sharded parameters (NVIDIA/Megatron-LM#1986); offload with sharding distopt")
    if plan.offload > 0:
        flag("--optimizer-cpu-offload")
        flag("--optimizer-offload-fraction", f"{plan.offload:g}")
        flag("--use-precision-aware-optimizer")
        flag("--overlap-cpu-optimizer-d2h-h2d")
    return a


FSDP_TE_FUSED = (2, 10)
"""Transformer Engine version Megatron-Core's Megatron-FSDP adapter asserts for fused gradient accumulation
(``mcore_fsdp_adapter.py``: "Megatron-FSDP with gradient_accumulation_fusion requires Transformer Engine version
2.10 or higher"; the NGC PyTorch 25.10 container ships 2.8)."""


def fsdp_fusion_check() -> list[str]:
    """Launch-script lines for a Megatron-FSDP plan: read the node's Transformer Engine version (package metadata,
    without importing torch) and, below ``FSDP_TE_FUSED``, run the unfused gradient accumulation rather than
    let Megatron assert after the job has started. ``FSDP_ARGS`` goes between the plan's and the user's
    arguments; a node without Transformer Engine's metadata is left to Megatron, with a note."""
    major, minor = FSDP_TE_FUSED
    return [
        "# Megatron-FSDP keeps Megatron's fused gradient accumulation, which needs Transformer Engine >= "
        f"{major}.{minor}",
        "# (Megatron-Core asserts it while building the model); with an older one, run the unfused path instead.",
        'PYTHON="${PYTHON:-python3}"  # the Python that torchrun runs',
        'TE_CHECK="$("$PYTHON" -c \'import importlib.metadata as m, re; v = m.version("transformer_engine"); '
        'print(v, int(tuple(int(x) for x in re.findall(r"[0-9]+", v)[:2]) >= '
        f'({major}, {minor})))\' 2>/dev/null || true)"',
        'read -r TE_VERSION TE_FUSED <<< "$TE_CHECK" || true',
        "FSDP_ARGS=()",
        'if [ -z "${TE_VERSION:-}" ]; then',
        '  echo "launch_megatron.sh: note: no Transformer Engine found by $PYTHON (set PYTHON to the one torchrun'
        f' runs); Megatron-FSDP\'s fused gradient accumulation needs >= {major}.{minor}" >&2',
        'elif [ "$TE_FUSED" != 1 ]; then',
        "  FSDP_ARGS=(--no-gradient-accumulation-fusion)",
        f'  echo "launch_megatron.sh: Transformer Engine $TE_VERSION is older than {major}.{minor}, which'
        ' Megatron-FSDP\'s fused gradient accumulation needs: adding --no-gradient-accumulation-fusion (a gradient add per'
        ' micro-batch that the plan\'s step time does not count)" >&2',
        "fi",
    ]


def needs_single_connection(cluster: ClusterSpec, plan: Plan) -> bool:
    """Megatron asserts CUDA_DEVICE_MAX_CONNECTIONS=1 with TP or CP > 1 before Blackwell, except under
    Megatron-FSDP (ZeRO-2/3), which asserts the opposite (it only warns about the TP/CP combination)."""
    fsdp = plan.sharding in MEGATRON_FSDP_SHARDINGS
    return (plan.tp > 1 or plan.cp > 1) and cluster.gpu.family in PRE_BLACKWELL and not fsdp


def user_args(model: ModelSpec) -> list[str]:
    """Placeholders for what the plan does not decide (data, tokenizer, schedule); replace them."""
    return ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(model.vocab_size),
            "--train-iters", "100", "--lr", "3e-4", "--min-lr", "3e-5", "--lr-decay-style", "cosine",
            "--lr-warmup-iters", "10", "--weight-decay", "0.1", "--clip-grad", "1.0", "--log-interval", "1"]


def hosts(cluster: ClusterSpec, placement: Placement, names: tuple[str, ...] = ()) -> list[str]:
    """Host of each job slot, in placement order (given names, a measured profile's, else node00...)."""
    known = known_hosts(cluster, names) or tuple(f"node{i:02d}" for i in range(cluster.num_nodes))
    return [known[i] for i in placement.node_order]


def gpu_orders(cluster: ClusterSpec, placement: Placement) -> list[list[int]]:
    return [list(o) for o in placement.gpu_order] or [list(range(cluster.gpus_per_node))] * cluster.num_nodes


def connections_env(cluster: ClusterSpec, plan: Plan) -> str | None:
    """The CUDA_DEVICE_MAX_CONNECTIONS the launch script exports (None: leave it unset)."""
    if needs_single_connection(cluster, plan):
        return "1"
    if plan.ep_overlap and cluster.gpu.family in PRE_BLACKWELL:
        return "32"  # Megatron: EP A2A overlap wants more than one hardware queue
    return None


def launch_script(model: ModelSpec, cluster: ClusterSpec, plan: Plan, placement: Placement,
                  names: tuple[str, ...] = ()) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Per-node launch of Megatron-LM's pretrain_gpt.py for this plan (written by configurator).",
        "#   bare metal: on every node   bash launch_megatron.sh NODE_RANK [MASTER_ADDR] [MASTER_PORT]",
        "#   Slurm:      sbatch launch_megatron.sbatch   (srun runs this once per node)",
        "# Static node ranks, not c10d rendezvous: c10d orders nodes by address and would undo the placement.",
        "# Global rank = NODE_RANK * NPROC + local rank; groups follow Megatron's tp-cp-ep-dp-pp order",
        "# (leftmost fastest), see placement.txt.",
    ]
    lines += node_prologue("launch_megatron.sh", cluster, placement, known_hosts(cluster, names),
                           gpu_orders(cluster, placement), per_node=True)
    lines += [
        'MEGATRON_DIR="${MEGATRON_DIR:-$PWD/Megatron-LM}"',
        '[ -f "$MEGATRON_DIR/pretrain_gpt.py" ] || die "MEGATRON_DIR=$MEGATRON_DIR has no pretrain_gpt.py'
        ' (set MEGATRON_DIR to a Megatron-LM checkout)"',
        'export CUDA_VISIBLE_DEVICES="${GPU_ORDERS[$NODE_RANK]}"',
    ]
    conn = connections_env(cluster, plan)
    if conn == "1":
        lines.append("export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with TP/CP > 1 before Blackwell")
    elif conn is not None:
        lines.append(f"export CUDA_DEVICE_MAX_CONNECTIONS={conn}  # EP all-to-all overlap needs several queues")
    else:
        lines.append("unset CUDA_DEVICE_MAX_CONNECTIONS  # this plan needs the driver's default")
    fsdp = plan.sharding in MEGATRON_FSDP_SHARDINGS
    if fsdp:
        lines += fsdp_fusion_check()
    if plan.tp_overlap:
        lines.append("# --tp-comm-overlap needs Transformer Engine built with userbuffers (NGC PyTorch containers).")
    lines += [
        "# Data, tokenizer, schedule and checkpoints are yours: replace these placeholders, e.g.",
        "#   --data-path PREFIX --tokenizer-type HuggingFaceTokenizer --tokenizer-model NAME_OR_DIR",
        "#   --save CKPT_DIR --load CKPT_DIR --save-interval N --train-iters N --lr ...",
        "USER_ARGS=(" + " ".join(user_args(model)) + ")",
        'mapfile -t PLAN_ARGS < "$HERE/megatron_args.txt"  # one word per line',
        'exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \\',
        '  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \\',
        '  "$MEGATRON_DIR/pretrain_gpt.py" "${PLAN_ARGS[@]}" '
        + ('${FSDP_ARGS[@]+"${FSDP_ARGS[@]}"} ' if fsdp else "") + '"${USER_ARGS[@]}"',
    ]
    return "\n".join(lines) + "\n"


def placement_text(cluster: ClusterSpec, plan: Plan, placement: Placement, names: tuple[str, ...] = ()) -> str:
    host_list = hosts(cluster, placement, names)
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


__all__ = ["connections_env", "flex_backend", "launch_script", "megatron_args", "model_args", "needs_single_connection",
           "placement_text", "user_args"]
