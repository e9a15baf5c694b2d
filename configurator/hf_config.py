"""ModelSpec from a Hugging Face ``config.json``.

Supported ``model_type`` values: see ``SUPPORTED`` (Llama/Mistral/Qwen/DeepSeek, GPT-2/NeoX, Gemma-2/3,
Phi-3, OLMo-2/3, Nemotron, Granite/Granite-MoE, GLM-4/GLM-4-MoE, EXAONE-4, gpt-oss). A missing required
key is an ``InputError`` naming the file and key; runtime-only keys are ignored, but what changes the
network (RoPE base and scaling, biases, norm placement and epsilon, activation, router, MTP layers) is
read into the ModelSpec, and what it has no field for goes into ``features`` by name (sliding windows,
logit soft-capping, embedding multipliers, attention sinks) so an emitter can refuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configurator.errors import InputError
from configurator.specs.model import ModelSpec

LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma2", "gemma3_text",
              "gemma3", "phi3", "olmo2", "olmo3", "nemotron", "granite", "granitemoe", "glm4", "exaone4", "gpt_oss")
DEEPSEEK = ("deepseek_v2", "deepseek_v3", "glm4_moe")
SUPPORTED = LLAMA_LIKE + DEEPSEEK + ("gpt2", "gpt_neox")
SANDWICH_NORMS = ("gemma2", "gemma3_text", "gemma3", "glm4")
POST_NORMS = ("olmo2", "olmo3", "exaone4")


def _full_attention_every(cfg: dict[str, Any], model_type: str) -> int:
    """N where every N-th layer (N-1, 2N-1, ...) attends fully and the rest use the sliding window (the cost
    model's ``sliding_window_every``; ModelSpec.attention_window): from ``layer_types`` when it has that
    period (gpt-oss: 2), Gemma-3's ``sliding_window_pattern``, Gemma-2's and gpt-oss's default alternation (2); 0 = every layer
    windowed (Mistral) or a pattern without such a period (then every layer is costed windowed)."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types and all(t in ("sliding_attention", "full_attention") for t in types):
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        if full and full[0] + 1 > 1 and all(
                (t == "full_attention") == ((i + 1) % (full[0] + 1) == 0) for i, t in enumerate(types)):
            return full[0] + 1
        return 0
    if model_type.startswith("gemma3") and isinstance(cfg.get("sliding_window_pattern"), int):
        return int(cfg["sliding_window_pattern"])
    if model_type in ("gemma2", "gpt_oss"):
        return 2  # their configs' default layer_types: even layers sliding, odd layers full
    return 0


def _network_fields(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """RoPE, norm, bias and routing details that the ModelSpec carries for the emitters."""
    out: dict[str, Any] = {}
    if cfg.get("rope_theta") is not None:
        out["rope_base"] = float(cfg["rope_theta"])
    rope = cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if kind in ("llama3", "yarn", "linear"):
        out["rope_scaling"] = kind
        out["rope_scaling_factor"] = float(rope.get("factor", 1.0))
        out["rope_original_max_positions"] = int(rope.get("original_max_position_embeddings") or 0)
        if kind == "llama3" and (rope.get("low_freq_factor", 1) != 1 or rope.get("high_freq_factor", 4) != 4):
            out["features"] = [f"rope_scaling={rope}"]
        if kind == "yarn":
            out["rope_mscale"] = float(rope.get("mscale", 1.0) or 1.0)
            out["rope_mscale_all_dim"] = float(rope.get("mscale_all_dim", 0.0) or 0.0)
    elif kind not in (None, "default"):
        out["features"] = [f"rope_scaling={kind}"]
    if cfg.get("partial_rotary_factor") is not None:
        out["rope_percent"] = float(cfg["partial_rotary_factor"])
    eps = cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", cfg.get("norm_eps")))
    if eps is not None:
        out["norm_eps"] = float(eps)
    if cfg.get("attention_bias"):
        out["qkv_bias"] = True
    features = out.setdefault("features", [])
    for key in ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "embedding_multiplier",
                "residual_multiplier", "attention_multiplier", "logits_scaling"):
        value = cfg.get(key)
        if value not in (None, 0, 1, 1.0, False) and not (key == "sliding_window" and model_type in
                                                           ("mistral", "mixtral", "qwen2", "qwen3")
                                                           and not cfg.get("use_sliding_window")):
            features.append(f"{key}={value}")
    every = _full_attention_every(cfg, model_type)
    if every and any(f.startswith("sliding_window=") for f in features):
        features.append(f"sliding_window_every={every}")
    if model_type.startswith("gemma"):
        features.append("embedding_scale=sqrt(hidden_size)")
    if model_type == "gpt_oss":
        features += ["attention_sinks", f"clamped_swiglu(limit={cfg.get('swiglu_limit', 7.0)})"]
    if cfg.get("router_aux_loss_coef"):
        out["moe_aux_loss_coeff"] = float(cfg["router_aux_loss_coef"])
    if not features:
        out.pop("features")
    return out


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
    if model_type == "gemma3" and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}  # the language model of the VLM
        model_type = "gemma3_text"
    if model_type == "gpt_oss" and "num_experts_per_tok" not in cfg and "experts_per_token" in cfg:
        cfg = {**cfg, "num_experts_per_tok": cfg["experts_per_token"]}
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
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if model_type in ("gemma2", "gemma3_text", "gemma3"):
        mlp, activation = "swiglu", "gelu_tanh"  # GeGLU: gated like SwiGLU, GELU-tanh inside
    elif act == "relu2":
        mlp, activation = "relu2", ""
    elif act in ("silu", "swish"):
        mlp, activation = "swiglu", ""
    else:
        raise InputError(f"{name}:hidden_act", act, "only SwiGLU (silu), GeGLU (Gemma) and squared-ReLU MLPs are supported")
    net = _network_fields(cfg, model_type)
    common: dict[str, Any] = dict(
        name=name, num_layers=get("num_hidden_layers"), hidden_size=get("hidden_size"),
        num_attention_heads=heads, vocab_size=get("vocab_size"), mlp=mlp, activation=activation,
        norm="layernorm" if model_type == "nemotron" else "rmsnorm",
        norm_zero_centered=model_type == "nemotron" or model_type.startswith("gemma"),
        norm_placement="sandwich" if model_type in SANDWICH_NORMS else "post" if model_type in POST_NORMS else "pre",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma") or model_type == "granite"
                                     or model_type == "granitemoe")),
        **net,
    )

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
                       moe_layer_freq=get("moe_layer_freq", 1),
                       moe_router_score="sigmoid" if cfg.get("scoring_func", "softmax") == "sigmoid"
                       or model_type == "glm4_moe" else "softmax",
                       moe_router_expert_bias=cfg.get("topk_method") == "noaux_tc" or model_type == "glm4_moe",
                       moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                       moe_routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0) or 1.0))
            groups, group_topk = cfg.get("n_group") or 0, cfg.get("topk_group") or 0
            if groups > 1:
                moe.update(moe_router_num_groups=groups, moe_router_group_topk=group_topk)
            if cfg.get("aux_loss_alpha"):
                moe.update(moe_aux_loss_coeff=float(cfg["aux_loss_alpha"]),
                           moe_aux_loss_type="seq_aux_loss" if cfg.get("seq_aux") else "aux_loss")
        mtp = get("num_nextn_predict_layers", 0, positive=False) or 0
        if model_type == "glm4_moe":  # GQA attention, not MLA
            kv = get("num_key_value_heads", heads)
            head_dim = get("head_dim", 0, positive=False) or 0
            if head_dim * heads == common["hidden_size"]:
                head_dim = 0
            return ModelSpec(**common, ffn_hidden_size=get("intermediate_size"), num_kv_heads=kv,
                             attention="mha" if kv == heads else "gqa", head_dim=head_dim,
                             qk_norm=bool(cfg.get("use_qk_norm")), mtp_layers=mtp, **moe)
        return ModelSpec(
            **common, ffn_hidden_size=get("intermediate_size"), num_kv_heads=heads, attention="mla",
            q_lora_rank=q_lora, kv_lora_rank=get("kv_lora_rank"),
            qk_nope_head_dim=get("qk_nope_head_dim"), qk_rope_head_dim=get("qk_rope_head_dim"),
            v_head_dim=get("v_head_dim"), mtp_layers=mtp, **moe)

    kv_heads = get("num_key_value_heads", heads)
    head_dim = get("head_dim", 0, positive=False) or 0
    if head_dim and head_dim * heads == common["hidden_size"]:
        head_dim = 0  # the default; keep the spec canonical
    moe = {}
    if model_type in ("mixtral", "granitemoe", "gpt_oss"):
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
                   moe_layer_freq=get("decoder_sparse_step", 1),
                   moe_norm_topk_prob=bool(cfg.get("norm_topk_prob", False)))
        if shared_ffn:
            common.setdefault("features", []).append("shared_expert_gate")
    if model_type in ("qwen2", "qwen2_moe"):
        common["qkv_bias"] = True  # Qwen2's q/k/v projections carry biases (no config key says so)
    if model_type == "gpt_oss":
        common.pop("qkv_bias", None)  # all linears carry biases: linear_bias
    return ModelSpec(
        **common, ffn_hidden_size=get("intermediate_size"), num_kv_heads=kv_heads,
        attention="mha" if kv_heads == heads else "gqa", head_dim=head_dim,
        linear_bias=model_type == "gpt_oss",
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3", "olmo2", "olmo3", "exaone4"),
        qk_norm_full_width=model_type in ("olmo2", "olmo3"), **moe)
