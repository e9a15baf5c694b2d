"""ModelSpec: the shape of a decoder-only transformer, and its parameter counts.

The spec is what the cost and memory models need, nothing more: positions (rotary, ALiBi) cost
nothing and are not modelled, except learned position embeddings, which are parameters.
Covered families: dense GPT (GELU, MHA, LayerNorm with biases), Llama-style (SwiGLU, GQA,
RMSNorm, untied embeddings), MoE (Mixtral, Qwen3-MoE: routed experts, top-k, expert FFN size,
shared experts, dense first layers) and DeepSeek-V3 (multi-head latent attention, MLA).

Parameter counts are checked against published totals in ``tests/test_model_params.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from configurator.errors import InputError, require, require_nonnegative_int, require_positive_int

MlpKind = Literal["gelu", "swiglu", "relu2"]
AttentionKind = Literal["mha", "gqa", "mla"]
NormKind = Literal["layernorm", "rmsnorm"]

MLP_KINDS: tuple[str, ...] = ("gelu", "swiglu", "relu2")
"""relu2 = squared ReLU without a gate (Nemotron): two matrices, like gelu."""
ATTENTION_KINDS: tuple[str, ...] = ("mha", "gqa", "mla")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm")
ACTIVATIONS: tuple[str, ...] = ("", "gelu_tanh")
"""Activation override; "" = the MLP kind's own (swiglu: SiLU, gelu: GELU, relu2: ReLU^2). gelu_tanh with
mlp=swiglu is a gated GELU-tanh (GeGLU, Gemma): same matrices as SwiGLU, a different nonlinearity."""
ROPE_SCALINGS: tuple[str, ...] = ("", "llama3", "yarn", "linear")
NORM_PLACEMENTS: tuple[str, ...] = ("pre", "post", "sandwich")
"""pre: a norm before attention and before the MLP (Llama); post: after each sublayer's output, before the
residual add, no input norm (OLMo-2, EXAONE-4); sandwich: both (Gemma-2/3, GLM-4): four norms a layer."""
ROUTER_SCORES: tuple[str, ...] = ("softmax", "sigmoid")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """A decoder-only transformer. Sizes are element counts, not bytes."""

    name: str
    """Preset key or the file the spec came from; shown in output only."""
    num_layers: int
    """Transformer layers (MTP modules excluded)."""
    hidden_size: int
    ffn_hidden_size: int
    """Intermediate size of the dense MLP (per branch for SwiGLU)."""
    num_attention_heads: int
    num_kv_heads: int
    """Key/value heads (query groups). Equal to the head count for MHA; ignored for MLA."""
    vocab_size: int
    """True vocabulary size; Megatron pads it (``padded_vocab_size``) for memory and FLOPs."""
    mlp: MlpKind
    attention: AttentionKind
    norm: NormKind = "rmsnorm"
    head_dim: int = 0
    """Per-head dimension; 0 means hidden_size / num_attention_heads (Qwen3 sets it explicitly)."""
    linear_bias: bool = False
    """Biases on the attention and MLP linears (GPT-2/3, BLOOM) or not (Llama)."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""
    tied_embeddings: bool = False
    """The LM head reuses the input embedding matrix."""
    learned_position_embeddings: int = 0
    """Rows of a learned absolute position table (GPT-3: 2048); 0 for rotary/ALiBi."""
    dropout: bool = False
    """Training uses dropout, so masks are stored as activations (GPT-3 era: yes; Llama: no)."""
    # Mixture of experts.
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for a dense model."""
    moe_topk: int = 0
    moe_ffn_hidden_size: int = 0
    """Intermediate size of one routed expert."""
    num_shared_experts: int = 0
    shared_expert_ffn_hidden_size: int = 0
    """Total intermediate size of the shared experts of a layer (DeepSeek-V3: 1 x 2048)."""
    first_dense_layers: int = 0
    """The first k layers use the dense MLP (DeepSeek-V3: 3)."""
    moe_layer_freq: int = 1
    """Every n-th layer (after ``first_dense_layers``) is an MoE layer."""
    # Multi-head latent attention (DeepSeek-V2/V3).
    q_lora_rank: int = 0
    """0 = queries are not compressed."""
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # What changes the network without changing the cost model's shapes; emitted so the launch files
    # describe the same model (issue 14). Defaults are Llama-2's and keep every count unchanged.
    rope_base: float = 10000.0
    """Rotary base (theta): Llama-3 500000, Qwen/Mixtral 1e6."""
    rope_percent: float = 1.0
    """Fraction of each head's dimensions that are rotated (GLM-4, Nemotron: 0.5)."""
    rope_scaling: str = ""
    """"" none; llama3 (Llama-3.1: factor, low 1, high 4, original 8192); yarn (DeepSeek-V3); linear."""
    rope_scaling_factor: float = 1.0
    rope_original_max_positions: int = 0
    """The context the rotary frequencies were trained for, before scaling (0 = not scaled)."""
    rope_mscale: float = 1.0
    rope_mscale_all_dim: float = 0.0
    qkv_bias: bool = False
    """Biases on the query/key/value projections only (Qwen2, GLM-4); linear_bias covers all linears."""
    norm_eps: float = 1e-5
    norm_zero_centered: bool = False
    """Norm weights stored as w-1 (layernorm1p: Nemotron; Gemma's RMSNorm)."""
    norm_placement: str = "pre"
    qk_norm_full_width: bool = False
    """The query/key norm spans all heads (OLMo-2: over heads x head_dim), not one head (Qwen3)."""
    activation: str = ""
    moe_router_score: str = "softmax"
    moe_norm_topk_prob: bool = True
    """Top-k weights renormalised to sum to 1 (Mixtral, Qwen3-MoE, DeepSeek-V3); False: Qwen2-MoE."""
    moe_router_expert_bias: bool = False
    """Aux-loss-free balancing: a per-expert bias added to the scores for selection (DeepSeek-V3)."""
    moe_router_num_groups: int = 0
    moe_router_group_topk: int = 0
    """Group-limited routing: experts in ``num_groups`` groups, tokens go to the best ``group_topk``."""
    moe_routed_scaling_factor: float = 1.0
    moe_aux_loss_coeff: float = 0.0
    moe_aux_loss_type: str = "aux_loss"
    """aux_loss (per micro-batch, Switch/Mixtral) or seq_aux_loss (per sequence, DeepSeek-V3)."""
    mtp_layers: int = 0
    """Multi-token-prediction modules after the main stack (DeepSeek-V3: 1); not in ``total_params``."""
    features: tuple[str, ...] = ()
    """Named properties of the network outside the fields above ("sliding_window=4096",
    "logit_softcapping=30", "embedding_multiplier=12", "attention_sinks", ...). Nothing may silently
    drop them: an emitter that cannot express one refuses the model, naming it."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_kv_heads", "vocab_size"):
            require_positive_int(name, getattr(self, name))
        for name in ("head_dim", "learned_position_embeddings", "num_experts", "moe_topk",
                     "moe_ffn_hidden_size", "num_shared_experts", "shared_expert_ffn_hidden_size",
                     "first_dense_layers", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                     "qk_rope_head_dim", "v_head_dim"):
            require_nonnegative_int(name, getattr(self, name))
        require_positive_int("moe_layer_freq", self.moe_layer_freq)
        for name in ("rope_original_max_positions", "moe_router_num_groups", "moe_router_group_topk",
                     "mtp_layers"):
            require_nonnegative_int(name, getattr(self, name))
        for name in ("rope_base", "rope_percent", "rope_scaling_factor", "norm_eps",
                     "moe_routed_scaling_factor", "rope_mscale"):
            value = getattr(self, name)
            require(not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < 1e12,
                    name, value, "must be a positive number")
        for name in ("rope_mscale_all_dim", "moe_aux_loss_coeff"):
            value = getattr(self, name)
            require(not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1e12,
                    name, value, "must be a non-negative number")
        require(self.rope_percent <= 1, "rope_percent", self.rope_percent, "must be in (0, 1]")
        require(self.rope_scaling in ROPE_SCALINGS, "rope_scaling", self.rope_scaling,
                f"must be one of {', '.join(repr(r) for r in ROPE_SCALINGS)}")
        require(self.norm_placement in NORM_PLACEMENTS, "norm_placement", self.norm_placement,
                f"must be one of {', '.join(NORM_PLACEMENTS)}")
        require(self.activation in ACTIVATIONS, "activation", self.activation,
                f"must be one of {', '.join(repr(a) for a in ACTIVATIONS)}")
        require(self.moe_router_score in ROUTER_SCORES, "moe_router_score", self.moe_router_score,
                f"must be one of {', '.join(ROUTER_SCORES)}")
        require(self.moe_aux_loss_type in ("aux_loss", "seq_aux_loss"), "moe_aux_loss_type",
                self.moe_aux_loss_type, "must be aux_loss or seq_aux_loss")
        if isinstance(self.features, list):  # from JSON
            object.__setattr__(self, "features", tuple(self.features))
        require(isinstance(self.features, tuple) and all(isinstance(f, str) and f for f in self.features),
                "features", self.features, "must be a list of non-empty names")
        if self.moe_router_num_groups or self.moe_router_group_topk:
            require(self.moe_router_num_groups > 0 and 0 < self.moe_router_group_topk <= self.moe_router_num_groups,
                    "moe_router_group_topk", self.moe_router_group_topk,
                    f"must be in 1..moe_router_num_groups={self.moe_router_num_groups}")
            require(self.num_experts % self.moe_router_num_groups == 0, "moe_router_num_groups",
                    self.moe_router_num_groups, f"must divide num_experts={self.num_experts}")
        from configurator.bounds import check_model_bounds

        check_model_bounds(self)
        require(self.mlp in MLP_KINDS, "mlp", self.mlp, f"must be one of {', '.join(MLP_KINDS)}")
        require(self.attention in ATTENTION_KINDS, "attention", self.attention,
                f"must be one of {', '.join(ATTENTION_KINDS)}")
        require(self.norm in NORM_KINDS, "norm", self.norm, f"must be one of {', '.join(NORM_KINDS)}")
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                require(getattr(self, name) > 0, name, getattr(self, name),
                        "must be set (> 0) for multi-head latent attention")
        else:
            require(self.num_attention_heads % self.num_kv_heads == 0, "num_kv_heads",
                    self.num_kv_heads,
                    f"must divide num_attention_heads={self.num_attention_heads}")
            if self.attention == "mha":
                require(self.num_kv_heads == self.num_attention_heads, "num_kv_heads",
                        self.num_kv_heads, "must equal num_attention_heads for attention=mha")
            if self.head_dim == 0:
                require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                        self.num_attention_heads,
                        f"must divide hidden_size={self.hidden_size} (or set head_dim)")
        if self.num_experts:
            require(self.moe_topk >= 1, "moe_topk", self.moe_topk, "must be >= 1 for an MoE model")
            require(self.moe_topk <= self.num_experts, "moe_topk", self.moe_topk,
                    f"must be <= num_experts={self.num_experts}")
            require(self.moe_ffn_hidden_size > 0, "moe_ffn_hidden_size", self.moe_ffn_hidden_size,
                    "must be set for an MoE model")
            require(self.first_dense_layers < self.num_layers, "first_dense_layers",
                    self.first_dense_layers, f"must be < num_layers={self.num_layers}")
        else:
            for name in ("moe_topk", "moe_ffn_hidden_size", "num_shared_experts",
                         "shared_expert_ffn_hidden_size"):
                if getattr(self, name):
                    raise InputError(name, getattr(self, name), "needs num_experts > 0")

    # ----- derived shapes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def kv_channels(self) -> int:
        """Per-head dimension of queries/keys/values (non-MLA)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def num_moe_layers(self) -> int:
        return sum(1 for i in range(self.num_layers) if self.layer_is_moe(i))

    def attention_window(self, index: int) -> int:
        """Keys a query of layer ``index`` attends to at most (0 = every earlier token), from ``features``:
        ``sliding_window=W`` windows every layer (Mistral) unless ``sliding_window_every=N`` says that every
        N-th layer (N-1, 2N-1, ...) attends fully and the others are windowed (GPT-OSS, Gemma-2: N = 2,
        even layers windowed, as their ``layer_types`` alternate sliding and full attention)."""
        window, every = 0, 0
        for feature in self.features:
            name, _, value = feature.partition("=")
            if name == "sliding_window" and value.isdigit():
                window = int(value)
            elif name == "sliding_window_every" and value.isdigit():
                every = int(value)
        if not window or (every > 1 and index % every == every - 1):
            return 0
        return window

    @property
    def clamped_glu(self) -> bool:
        """The gated MLP clamps its two halves before the activation (``clamped_swiglu(limit=L)`` in
        ``features``: GPT-OSS's ``swiglu_limit``; Megatron-Core's ``activation_func_clamp_value``)."""
        return any(f.startswith("clamped_swiglu") for f in self.features)

    def layer_is_moe(self, index: int) -> bool:
        """Megatron's pattern: dense first layers, then every ``moe_layer_freq``-th layer."""
        if not self.is_moe or index < self.first_dense_layers:
            return False
        return (index - self.first_dense_layers) % self.moe_layer_freq == 0

    def padded_vocab_size(self, tp: int = 1, divisible_by: int = 128) -> int:
        """Megatron pads the vocabulary to a multiple of ``divisible_by * tp``."""
        multiple = divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple

    # ----- parameter counts (elements) -----------------------------------------------------
    @property
    def norm_params(self) -> int:
        """One normalisation layer over ``hidden_size`` (LayerNorm has a bias)."""
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    @property
    def norms_per_layer(self) -> int:
        return 4 if self.norm_placement == "sandwich" else 2

    @property
    def attention_params(self) -> int:
        """Attention block of one layer, its input norm excluded."""
        h = self.hidden_size
        if self.attention == "mla":
            heads = self.num_attention_heads
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * qk_dim
            else:
                q = h * heads * qk_dim
            kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
                  + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim))
            out = heads * self.v_head_dim * h
            return q + kv + out
        d = self.kv_channels
        q_width = self.num_attention_heads * d
        kv_width = self.num_kv_heads * d
        params = h * (q_width + 2 * kv_width) + q_width * h
        if self.linear_bias:
            params += q_width + 2 * kv_width + h
        elif self.qkv_bias:
            params += q_width + 2 * kv_width
        if self.qk_norm:
            params += (q_width + kv_width) if self.qk_norm_full_width else 2 * d
        return params

    def _mlp_params(self, ffn: int) -> int:
        h = self.hidden_size
        if self.mlp == "swiglu":
            return 3 * h * ffn + ((2 * ffn + h) if self.linear_bias else 0)
        return 2 * h * ffn + ((ffn + h) if self.linear_bias else 0)

    @property
    def dense_mlp_params(self) -> int:
        return self._mlp_params(self.ffn_hidden_size)

    @property
    def expert_params(self) -> int:
        """One routed expert."""
        return self._mlp_params(self.moe_ffn_hidden_size) if self.is_moe else 0

    @property
    def shared_expert_params(self) -> int:
        ffn = self.shared_expert_ffn_hidden_size or self.num_shared_experts * self.moe_ffn_hidden_size
        return self._mlp_params(ffn) if (self.is_moe and ffn) else 0

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    def layer_params(self, index: int) -> tuple[int, int]:
        """(non-expert, routed-expert) parameters of layer ``index``.

        Non-expert parameters are replicated over data parallel and split over TP; routed
        experts are split over EP x expert-TP. Shared experts and the router count as
        non-expert (Megatron shards shared experts with TP like a dense MLP).
        """
        common = self.attention_params + self.norms_per_layer * self.norm_params
        if self.layer_is_moe(index):
            return (common + self.shared_expert_params + self.router_params,
                    self.num_experts * self.expert_params)
        return common + self.dense_mlp_params, 0

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size + self.learned_position_embeddings * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        layers = sum(sum(self.layer_params(i)) for i in range(self.num_layers))
        return layers + self.norm_params + self.embedding_params + self.lm_head_params

    @property
    def mtp_params(self) -> int:
        """Multi-token-prediction modules (DeepSeek-V3): per module a projection of [h; e] (2h x h), two
        input norms, one transformer layer like the last one, a final norm; embedding and head shared."""
        if not self.mtp_layers:
            return 0
        per = 2 * self.hidden_size * self.hidden_size + 3 * self.norm_params + sum(self.layer_params(self.num_layers - 1))
        return self.mtp_layers * per

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: top-k routed experts instead of all of them."""
        total = self.total_params
        if not self.is_moe:
            return total
        inactive = self.num_moe_layers * (self.num_experts - self.moe_topk) * self.expert_params
        return total - inactive
