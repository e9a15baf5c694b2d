"""Upper bounds on every size and count a request can carry, with why each is where it is.

Positivity and types are checked by each spec; these bounds make the cost of any request bounded
(no list, matrix or simulation grows with an absurd number) and reject numbers no machine or model
has, each as an ``InputError`` naming the field. They sit far above anything built or announced, so
they never refuse a real job; the README's "Input bounds" table lists them.
"""

from __future__ import annotations

from typing import Any

from configurator.errors import InputError

MAX_GPUS = 2**20
"""1,048,576 GPUs: ~5x the largest cluster announced (xAI Colossus, ~200,000 GPUs). Also caps every
parallel degree (tp, pp, dp, cp, ep, etp), each a divisor of the GPU count."""
MAX_NODES = MAX_GPUS
MAX_GPUS_PER_NODE = 64
"""Largest server today: 16 GPUs (HGX-2); a GB200 NVL72 compute tray holds 4."""
MAX_NVLINK_DOMAIN_GPUS = 4096
"""Largest NVLink domain announced: NVL576 (Rubin Ultra)."""
MAX_HOST_CPU_CORES = 4096
MAX_HOST_MEMORY_GIB = 65536
"""64 TiB per node; the largest 8-socket servers take 32 TiB."""
MAX_PROFILE_NODES = 4096
"""A measured profile lists every ordered node pair: 4,096 nodes are 16.8 million links (the 64 MiB
input-file cap is reached first, near 1,000 nodes)."""
MAX_LINK_BANDWIDTH_GBPS = 100_000.0
"""100 TB/s per GPU per direction; NVLink 5 is 0.9 TB/s, so a bigger value is a unit mistake."""
MAX_LINK_LATENCY_S = 10.0
MAX_GLOBAL_BATCH = 2**24
"""16,777,216 sequences per step; the largest published batches are ~16M tokens (Llama 3: 2,048 x 8,192)."""
MAX_SEQ_LEN = 2**24
"""16,777,216 tokens per sequence; the longest trained contexts are 10M (Llama 4 Scout)."""
MAX_LAYERS = 1024
"""Transformer layers (and so pipeline stages x virtual stages); the deepest LLMs have ~130."""
MAX_HIDDEN_SIZE = 2**18
"""262,144; the widest LLMs have 18,432 (PaLM-540B) to 25,600 (Gopher/MT-NLG)."""
MAX_FFN_HIDDEN_SIZE = 2**20
MAX_VOCAB_SIZE = 2**24
"""16.8M tokens; the largest vocabularies are ~262k (Gemma 3)."""
MAX_HEADS = 2**14
MAX_EXPERTS = 2**16
"""65,536 routed experts per layer; the most in a released model is 384 (Kimi K2); PEER uses 1M tiny
experts, outside what this tool models."""
MAX_HEAD_DIM = 2**14


def require_at_most(field: str, value: Any, limit: int | float, what: str = "") -> None:
    """``value <= limit`` (numbers only; types are the specs' own checks)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        raise InputError(field, value, f"must be <= {limit:,}{(' ' + what) if what else ''}")


def check_model_bounds(model: Any) -> None:
    """Sizes of a ``ModelSpec`` (called from its ``__post_init__`` after the type checks)."""
    require_at_most("num_layers", model.num_layers, MAX_LAYERS, "layers")
    require_at_most("hidden_size", model.hidden_size, MAX_HIDDEN_SIZE)
    for name in ("ffn_hidden_size", "moe_ffn_hidden_size", "shared_expert_ffn_hidden_size", "q_lora_rank",
                 "kv_lora_rank"):
        require_at_most(name, getattr(model, name), MAX_FFN_HIDDEN_SIZE)
    for name in ("num_attention_heads", "num_kv_heads"):
        require_at_most(name, getattr(model, name), MAX_HEADS)
    for name in ("head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        require_at_most(name, getattr(model, name), MAX_HEAD_DIM)
    require_at_most("vocab_size", model.vocab_size, MAX_VOCAB_SIZE)
    require_at_most("learned_position_embeddings", model.learned_position_embeddings, MAX_SEQ_LEN)
    for name in ("num_experts", "num_shared_experts"):
        require_at_most(name, getattr(model, name), MAX_EXPERTS)
    require_at_most("first_dense_layers", model.first_dense_layers, MAX_LAYERS)
    require_at_most("moe_layer_freq", model.moe_layer_freq, MAX_LAYERS)


def check_plan_bounds(plan: Any) -> None:
    """Degrees of a ``Plan``: each at most ``MAX_GPUS``; virtual stages at most ``MAX_LAYERS``."""
    for name in ("tp", "pp", "dp", "cp", "ep", "etp"):
        require_at_most(name, getattr(plan, name), MAX_GPUS, "(the largest GPU count)")
    require_at_most("vpp", plan.vpp, MAX_LAYERS, "(each virtual stage holds at least one layer)")
    require_at_most("pp*vpp", plan.pp * plan.vpp, MAX_LAYERS, "(each virtual stage holds at least one layer)")
    require_at_most("micro_batch", plan.micro_batch, MAX_GLOBAL_BATCH, "sequences")
    require_at_most("recompute_num_layers", plan.recompute_num_layers, MAX_LAYERS)
    require_at_most("shard_group", plan.shard_group, MAX_GPUS)


def check_cluster_bounds(cluster: Any) -> None:
    """Sizes of a ``ClusterSpec``."""
    require_at_most("num_nodes", cluster.num_nodes, MAX_NODES)
    require_at_most("gpus_per_node", cluster.gpus_per_node, MAX_GPUS_PER_NODE)
    require_at_most("num_gpus", cluster.num_nodes * cluster.gpus_per_node, MAX_GPUS, "GPUs")
    require_at_most("nvlink_domain_gpus", cluster.nvlink_domain_gpus, MAX_NVLINK_DOMAIN_GPUS)
    require_at_most("host_cpu_cores_per_node", cluster.host_cpu_cores_per_node, MAX_HOST_CPU_CORES)
    require_at_most("host_memory_GiB_per_node", cluster.host_memory_bytes_per_node / 2**30, MAX_HOST_MEMORY_GIB)
