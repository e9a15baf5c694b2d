"""JobSpec: what the user wants trained, independent of how it is parallelised."""

from __future__ import annotations

from dataclasses import dataclass

from configurator.bounds import MAX_GLOBAL_BATCH, MAX_SEQ_LEN, require_at_most
from configurator.errors import require, require_positive_int
from configurator.specs.hardware import PRECISIONS

MOE_ROUTINGS = ("learned", "force_balanced", "capacity_padded")
CUDA_GRAPH_SCOPES = ("attn", "mlp", "moe_router", "moe_preprocess", "full_iteration")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    global_batch: int
    """Sequences per optimizer step (Megatron's --global-batch-size)."""
    seq_len: int
    """Tokens per sequence."""
    precision: str = "bf16"
    """Compute precision of the GEMMs: bf16, fp16, fp8 (Hopper+) or fp4 (Blackwell)."""
    moe_routing: str = "learned"
    """How an MoE router assigns tokens: ``learned`` (real training: experts' loads vary, the busiest EP
    rank sets the pace) or ``force_balanced`` (Megatron's ``--moe-router-force-load-balancing``, the
    benchmark mode of NVIDIA's performance recipes: random logits, so loads vary only by sampling) or
    ``capacity_padded`` (Megatron's ``--moe-expert-capacity-factor 1.0 --moe-pad-expert-input-to-capacity``,
    NeMo's ``MegatronTokenDropCallback`` defaults: tokens over an expert's capacity are dropped and every
    expert's input is padded up to it, so every expert runs exactly the mean load and no rank waits)."""
    compiled: bool = True
    """The framework fuses the layers' elementwise ops (Transformer Engine / Megatron fusions, or
    ``torch.compile`` in torchtitan, which the emitted torchtitan files enable). False: PyTorch eager, one
    kernel per op, so RMSNorm, rotary and SwiGLU move their tensors several times (``cost/work.py``'s
    ``eager_elementwise_bytes``); torchtitan's rows run that way unless they say compile/Float8/Async TP."""
    cuda_graphs: tuple[str, ...] = ()
    """Parts of each layer the framework captures in CUDA graphs (Megatron-Core ``--cuda-graph-impl
    transformer_engine --cuda-graph-scope ...``: ``attn``, ``moe_router``, ``moe_preprocess``; or
    ``full_iteration``), whose kernels then cost one graph replay instead of a host launch each
    (cost/launch.py). Empty: eager launches unless the plan captures its own (``Plan.cuda_graphs``, the search's
    knob). Set by runs.py from a published row's recipe, and then it is what the step model uses."""
    fused_expert_mlp: bool = False
    """The routed experts run as Transformer Engine's fused grouped MLP (Megatron-Core
    ``use_transformer_engine_op_fuser`` with ``NVTE_CUTEDSL_FUSED_GROUPED_MLP=1``: FC1, the probability-scaled
    (clamped) GLU and FC2 with its probability-scaled bias in one op), so a clamped GLU and expert biases add
    no kernels of their own (``cost/work.py``'s ``unfused_expert_bytes``). False: Megatron-Core's
    ``TEGroupedMLP`` path, what the emitted launch files run. Set by runs.py from a published row's recipe;
    not a plan knob."""
    fp8_attention: bool = False
    """The core attention's two GEMMs run in fp8 (Transformer Engine's cuDNN fused attention with
    ``fp8_dot_product_attention``): its tensor-core pipe at the fp8 rate, its softmax exponentials on the
    SFU as before, so on Blackwell the exponentials set the pace (cost/compute.py). False: bf16 attention,
    what the emitted launch files run. Set by runs.py from a published row's recipe; not a plan knob."""

    flex_dispatcher_sms: int = 0
    """SMs the flex dispatcher's (DeepEP/HybridEP) dispatch and combine kernels hold while they run
    (Megatron-Core ``moe_flex_dispatcher_num_sms``, formerly ``moe_hybridep_num_sms``), which compute
    overlapped with them cannot use (cost/knobs.py ``flex_overlap_compute_slowdown``). 0: DeepEP's default
    (profiles/cost.json ``flex_dispatcher_sms``, 20), what the emitted launch files run. Set by runs.py from a
    published row's recipe (Megatron-Bridge's HybridEP recipes set 32); not a plan knob."""

    def __post_init__(self) -> None:
        require(isinstance(self.flex_dispatcher_sms, int) and not isinstance(self.flex_dispatcher_sms, bool)
                and self.flex_dispatcher_sms >= 0,
                "flex_dispatcher_sms", self.flex_dispatcher_sms, "must be a non-negative integer")
        require_positive_int("global_batch", self.global_batch)
        require_positive_int("seq_len", self.seq_len)
        require_at_most("global_batch", self.global_batch, MAX_GLOBAL_BATCH, "sequences")
        require_at_most("seq_len", self.seq_len, MAX_SEQ_LEN, "tokens")
        require(self.precision in PRECISIONS, "precision", self.precision,
                f"must be one of {', '.join(PRECISIONS)}")
        for scope in self.cuda_graphs:
            require(scope in CUDA_GRAPH_SCOPES, "cuda_graphs", scope,
                    f"must be one of {', '.join(CUDA_GRAPH_SCOPES)}")
        require(self.moe_routing in MOE_ROUTINGS, "moe_routing", self.moe_routing,
                f"must be one of {', '.join(MOE_ROUTINGS)}")

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len
