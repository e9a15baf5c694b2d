"""ModelSpec from a Hugging Face ``config.json``.

Supported ``model_type`` values: llama, mistral, mixtral, qwen2, qwen3, qwen2_moe, qwen3_moe,
deepseek_v2, deepseek_v3, gpt2, gpt_neox. A missing required key is an ``InputError`` naming the
file and key; a key we do not use is ignored (HF configs carry many runtime-only keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configurator.errors import InputError
from configurator.specs.model import ModelSpec

LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
DEEPSEEK = ("deepseek_v2", "deepseek_v3")
SUPPORTED = LLAMA_LIKE + DEEPSEEK + ("gpt2", "gpt_neox")


def load_hf_config(path: Path) -> ModelSpec:
    """Read ``path`` (a config.json) into a ModelSpec."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError("model", str(path), f"cannot read file ({exc.strerror})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("model", str(path), f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(cfg, dict):
        raise InputError("model", str(path), "must hold a JSON object")
    return spec_from_hf_dict(cfg, name=str(path))


def spec_from_hf_dict(cfg: dict[str, Any], *, name: str) -> ModelSpec:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise InputError(f"{name}:model_type", model_type,
                         f"is not supported (supported: {', '.join(SUPPORTED)})")

    def get(key: str, default: Any = ..., *, positive: bool = True) -> Any:
        value = cfg.get(key, default)
        if value is ...:
            raise InputError(f"{name}:{key}", None, f"is required for model_type={model_type}")
        if value is None and default is not ...:
            value = default
        if positive and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InputError(f"{name}:{key}", value, "must be a positive integer")
        return value

    if model_type == "gpt2":
        hidden = get("n_embd")
        return ModelSpec(
            name=name, num_layers=get("n_layer"), hidden_size=hidden,
            ffn_hidden_size=get("n_inner", 4 * hidden), num_attention_heads=get("n_head"),
            num_kv_heads=get("n_head"), vocab_size=get("vocab_size"), mlp="gelu", attention="mha",
            norm="layernorm", linear_bias=True, tied_embeddings=True,
            learned_position_embeddings=get("n_positions"),
            dropout=float(cfg.get("resid_pdrop", 0.0) or 0.0) > 0)
    if model_type == "gpt_neox":
        heads = get("num_attention_heads")
        return ModelSpec(
            name=name, num_layers=get("num_hidden_layers"), hidden_size=get("hidden_size"),
            ffn_hidden_size=get("intermediate_size"), num_attention_heads=heads, num_kv_heads=heads,
            vocab_size=get("vocab_size"), mlp="gelu", attention="mha", norm="layernorm",
            linear_bias=bool(cfg.get("attention_bias", True)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            dropout=float(cfg.get("hidden_dropout", 0.0) or 0.0) > 0)

    heads = get("num_attention_heads")
    common: dict[str, Any] = dict(
        name=name, num_layers=get("num_hidden_layers"), hidden_size=get("hidden_size"),
        num_attention_heads=heads, vocab_size=get("vocab_size"), mlp="swiglu", norm="rmsnorm",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise InputError(f"{name}:hidden_act", act, "only SwiGLU (silu) MLPs are supported for this model_type")

    if model_type in DEEPSEEK:
        q_lora = cfg.get("q_lora_rank") or 0
        experts = get("n_routed_experts", 0, positive=False) or 0
        moe: dict[str, Any] = {}
        if experts:
            shared = get("n_shared_experts", 0, positive=False) or 0
            moe = dict(num_experts=experts, moe_topk=get("num_experts_per_tok"),
                       moe_ffn_hidden_size=get("moe_intermediate_size"), num_shared_experts=shared,
                       shared_expert_ffn_hidden_size=shared * get("moe_intermediate_size"),
                       first_dense_layers=get("first_k_dense_replace", 0, positive=False),
                       moe_layer_freq=get("moe_layer_freq", 1))
        return ModelSpec(
            **common, ffn_hidden_size=get("intermediate_size"), num_kv_heads=heads, attention="mla",
            q_lora_rank=q_lora, kv_lora_rank=get("kv_lora_rank"),
            qk_nope_head_dim=get("qk_nope_head_dim"), qk_rope_head_dim=get("qk_rope_head_dim"),
            v_head_dim=get("v_head_dim"), **moe)

    kv_heads = get("num_key_value_heads", heads)
    head_dim = get("head_dim", 0, positive=False) or 0
    if head_dim and head_dim * heads == common["hidden_size"]:
        head_dim = 0  # the default; keep the spec canonical
    moe = {}
    if model_type == "mixtral":
        moe = dict(num_experts=get("num_local_experts"), moe_topk=get("num_experts_per_tok"),
                   moe_ffn_hidden_size=get("intermediate_size"))
    elif model_type in ("qwen2_moe", "qwen3_moe"):
        if cfg.get("mlp_only_layers"):
            raise InputError(f"{name}:mlp_only_layers", cfg["mlp_only_layers"],
                             "dense layers interleaved by index are not supported; use decoder_sparse_step")
        shared_ffn = get("shared_expert_intermediate_size", 0, positive=False) or 0
        moe = dict(num_experts=get("num_experts"), moe_topk=get("num_experts_per_tok"),
                   moe_ffn_hidden_size=get("moe_intermediate_size"),
                   num_shared_experts=1 if shared_ffn else 0, shared_expert_ffn_hidden_size=shared_ffn,
                   moe_layer_freq=get("decoder_sparse_step", 1))
    return ModelSpec(
        **common, ffn_hidden_size=get("intermediate_size"), num_kv_heads=kv_heads,
        attention="mha" if kv_heads == heads else "gqa", head_dim=head_dim,
        linear_bias=False, qk_norm=model_type in ("qwen3", "qwen3_moe"), **moe)
