"""What one micro-batch asks of one rank: GEMMs, attention, memory-bound traffic, message sizes.

Everything here is a count (FLOPs, bytes), independent of how fast the hardware is, so the
calibration can compute it once per run and re-time it for every trial of the constants.

Per layer and micro-batch on one rank, with ``t = micro_batch * seq_len / cp`` tokens:

* GEMMs (forward; backward is the dgrad and wgrad GEMMs, twice the FLOPs with the same shapes):
  QKV and output projections and the MLP, split over TP (``2*m*n*k`` FLOPs each); MLA's low-rank
  projections; for MoE layers the router, the shared experts (over TP) and the routed experts:
  ``t * top_k`` token-expert pairs spread over the stage's ``tp*cp*dp`` ranks, so a rank computes
  ``t * k / tp`` pairs' worth, as grouped GEMMs of ``t*k*etp*ep/(tp*E)`` rows per local expert.
* attention core (flash, causal): ``2 * t * s * heads/tp * (d_qk + d_v) * 1/2`` FLOPs forward;
  with CP each rank's queries see the whole sequence once around the ring, so the work is 1/cp.
* memory-bound bytes (norms, residual adds, activation functions, dropout, rotary, fp8 casts, MoE
  permutes): read + write of each elementwise kernel's tensors, split over TP where the tensor is
  (and over SP for the replicated ones).
* messages: the TP all-reduce-equivalent size (``t * h`` bf16; two per layer forward), the CP ring
  exchange of K and V, the EP dispatch size (``t/tp * k * h``).

``model_flops_per_token`` is the MFU convention of INTERFACE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

BF16 = 2


@dataclass(frozen=True, slots=True)
class Gemm:
    """``count`` GEMMs of (m x k) @ (k x n) at the job's GEMM precision (or bf16 if ``bf16``)."""

    m: float
    n: float
    k: float
    count: float = 1.0
    bf16: bool = False

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


@dataclass(frozen=True, slots=True)
class LayerWork:
    """Forward work of one layer for one micro-batch on one rank."""

    gemms: tuple[Gemm, ...]
    attention_flops: float
    attention_kv_len: float
    elementwise_bytes: float
    tp_bytes: float
    """Size of one TP all-reduce-equivalent (all-gather + reduce-scatter with SP)."""
    tp_collectives: int
    """TP all-reduce-equivalents per forward (backward has as many)."""
    cp_bytes: float
    """K and V bytes one rank passes on per ring step (forward)."""
    ep_bytes: float
    """Bytes one rank sends in one all-to-all (dispatch or combine) of the forward."""
    attn_batch: float = 0.0
    """Sequences x local heads (for an unfused attention's batched GEMMs)."""
    attn_q_len: float = 0.0
    attn_d_qk: float = 0.0
    attn_d_v: float = 0.0
    expert_gemms: tuple[Gemm, ...] = ()
    """The routed experts' grouped GEMMs (also in ``gemms``): the busiest EP rank runs more of them."""
    pairs_per_expert: float = 0.0
    """Mean token-expert pairs one expert receives per micro-batch (whole EP group)."""
    cp_a2a_bytes: float = 0.0
    """Bytes one rank sends in the all-to-alls of Ulysses CP per forward (Q, K, V and the output)."""
    extra_kernels: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Kernels a model's unfused operations add to the layer's launches (cost/launch.py): (attention forward,
    attention backward, experts forward, experts backward); ``unfused_kernels``."""
    attention_seq_len: float = 0.0
    """Tokens of the sequence the flash kernel tiles (``job.seq_len``; 0 = hand-built works, attended keys only):
    with ``attention_window`` it lets ``GpuRates`` count the keys the kernel computes in whole tiles
    (``computed_keys``). Context parallelism included: its ring (or gather, or head-split all-to-all) gives
    each query row one diagonal block, computed in tiles as without CP, and full blocks below it, so a row
    computes the same extra keys (half a diagonal tile; a window's edge tiles) as without CP."""
    attention_window: int = 0
    """Keys a windowed layer's query attends to (``ModelSpec.attention_window``); 0 = causal over the sequence."""
    etp_bytes: float = 0.0
    """Expert tensor parallelism (etp > 1): the dispatched (token, expert) pairs all-gathered over the
    expert-TP group after the all-to-all and the experts' outputs reduce-scattered before the combine
    (Megatron-Core's alltoall dispatcher, ``dispatch_postprocess`` / ``combine_preprocess``): the bytes of
    the gathered tensor, ``k x t x h x 2 x etp / tp``, costed as one all-reduce (= all-gather +
    reduce-scatter) over the ETP group."""


def _mlp_gemms(tokens: float, h: int, ffn: float, swiglu: bool, count: float = 1.0) -> list[Gemm]:
    up = 2 * ffn if swiglu else ffn
    return [Gemm(tokens, up, h, count), Gemm(tokens, h, ffn, count)]


def _mlp_act_bytes(ffn: float, swiglu: bool, fp8: bool) -> float:
    """Activation function read/write per token (+ the fp8 cast of fc2's input)."""
    act = (2 * ffn + ffn) * BF16 if swiglu else 2 * ffn * BF16
    return act + (3 * ffn if fp8 else 0)


EAGER_RMSNORM_BYTES = 2 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 2 + 2 + 2
"""Bytes per element of the Llama reference RMSNorm run eagerly (torchtitan's ``RMSNorm``:
``(x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).type_as(x) * weight``), one kernel per op:
``float()`` r2 w4, ``pow`` r4 w4, ``mean`` r4, ``x * rsqrt`` r4 w4, ``type_as`` r4 w2, ``* weight`` r2 w2
(36 B; the fused norm reads and writes bf16 once: 4 B)."""
FUSED_NORM_BYTES = 2 * BF16
EAGER_ROTARY_BYTES = 2 + 4 + 4 + 4 + 4 + 2
"""Bytes per element of q and k of the Llama reference ``apply_rotary_emb`` run eagerly: ``float()`` r2 w4,
the complex multiply by ``freqs_cis`` r4 w4, ``type_as`` r4 w2 (20 B)."""
EAGER_GQA_COPY_BYTES = 2 * BF16
"""``repeat_kv`` (expand + reshape, which copies) writes K and V at the query heads' width and reads them."""


def eager_extra_bytes(model: ModelSpec, q_width: float, kv_width: float, ffn_local: float, *,
                      moe: bool) -> tuple[float, float]:
    """(replicated, TP-split) memory traffic per token that PyTorch eager adds to a fused layer's.

    Eager PyTorch runs each elementwise op as its own kernel, reading and writing the whole tensor
    (in fp32 where the code upcasts), where ``torch.compile`` or Transformer Engine fuse them into one
    pass. Counted for what a Llama-style layer does outside its GEMMs and attention kernel: the two
    RMSNorms (``EAGER_RMSNORM_BYTES``; PyTorch's LayerNorm is one kernel already), rotary on q and k
    (``EAGER_ROTARY_BYTES``, replacing the fused count of ``2 (q + 2kv)`` bf16 reads and writes), the GQA
    copies of K and V, and SwiGLU's ``silu(a) * b`` as two kernels (r2 w2, then r2 r2 w2: 10 B per
    element instead of 6). Backward costs twice the forward's traffic, as for the fused kernels."""
    repl = 2 * (EAGER_RMSNORM_BYTES - FUSED_NORM_BYTES) * model.hidden_size if model.norm == "rmsnorm" else 0.0
    split = 0.0
    if model.attention != "mla" and not model.learned_position_embeddings:
        rotary = EAGER_ROTARY_BYTES * (q_width + kv_width)
        gqa = EAGER_GQA_COPY_BYTES * (q_width + kv_width) if q_width > kv_width else 0.0
        split += rotary + gqa - 2 * (q_width + 2 * kv_width) * BF16
    if model.mlp == "swiglu" and not moe:
        split += (10 - 3 * BF16) * ffn_local
    return repl, split


GLU_CLAMP_BYTES = (16, 30)
"""(forward, backward) bytes per element of an expert's ``ffn`` columns that Megatron-Core's clamped GLU adds
outside its fused activation kernel (``weighted_bias_quick_geglu_impl`` with ``clamp_value``, core_r0.15 to
0.18: fused_bias_geglu.py), bf16. Forward: ``x_glu.clamp(max=L)`` and ``x_linear.clamp(-L, L)`` each read
and write half of the 2 ffn fc1 output (2 x 2 B per element of the 2 ffn), then ``torch.cat`` of the two
reads and writes all 2 ffn again (4 B): 16 B per ffn element. Backward (autograd): the one-sided clamp's
``where(x <= L, grad, 0)`` reads x, writes the mask (3 B), reads mask and grad and writes (5 B); the two-sided
one builds its mask from two comparisons and an in-place ``logical_and`` (3 + 3 + 3 B) before the ``where``
(5 B); then the two halves' gradients are concatenated back into the fc1 output's gradient (read + write
2 x 2 B per element of the 2 ffn): (8 + 14) ffn + 8 ffn = 30 B per ffn element."""
EXPERT_BIAS_BYTES = (12, 16)
"""(forward, backward) bytes per element of ``hidden`` that an MoE expert's fc2 bias costs in Megatron-Core's
``TEGroupedMLP`` (``linear_fc2`` returns its bias, ``skip_bias_add=True``; ``_apply_bias`` adds it per local
expert in a Python loop: ``torch.cat([t + b * p for ...])``, core_r0.15 to 0.19), bf16 router probabilities
(GPT-OSS leaves ``moe_router_dtype`` unset). Forward: ``b * p`` writes the [n, h] product (2 B), ``t + ...``
reads both and writes (6 B), ``torch.cat`` copies (4 B): 12 B. Backward: the product's gradients ``grad * p``
(read 2, write 2, then reduced over tokens: read 2) and ``grad * b`` (the same, reduced over h), and the
split's gradient concatenated back (4 B): 16 B. fc1's bias is in the GEMM epilogue (free)."""


UNFUSED_ROPE_BYTES = (24, 26)
"""(forward, backward) bytes per element of q and k that Megatron-Core's unfused rotary embedding moves
(``_apply_rotary_pos_emb_bshd``, rope_utils.py), bf16. Megatron runs it unfused for YaRN on standard attention:
``--position-embedding-type yarn`` turns ``apply_rope_fusion`` off (training/arguments.py: "if
args.position_embedding_type != 'rope': args.apply_rope_fusion = False"; Megatron-Bridge's
``validate_rope_fusion_compatibility`` does the same for GPT-OSS's provider). Forward: ``t * cos`` (r2 w2),
``_rotate_half``'s negation of one half (r2 w2 on half the elements: 2) and ``cat`` (4), ``* sin`` (4), the
sum (r4 w2), the final ``cat`` with the empty pass-through part (4): 24 B. Backward: the two products' grads
(4 + 4), the negation's (2), the halves concatenated back (4), the two grads summed (6), the slice's
zero-filled gradient (w2 + r2 w2): 26 B. The fused kernel (``work.py``'s rotary count) reads and writes once
each way: 4 + 8 of these are already counted."""


def unfused_rope_bytes(model: ModelSpec, job: JobSpec) -> float:
    """Forward-equivalent bytes per element of q and k that an unfused rotary embedding adds over the fused
    count: ``(24 + 26 - 3 x 4) / 3`` (the step model times backward traffic as twice the forward's) for YaRN
    on non-MLA attention in the fused-kernel runtimes (``job.compiled``; MLA's YaRN is Megatron's
    ``--rope-type yarn`` under ``--position-embedding-type rope``, which keeps the fusion). torchtitan's
    eager rotary is counted by ``eager_extra_bytes`` instead; a compiled torchtitan run is costed as
    Megatron's here (no published row has one)."""
    if not job.compiled or model.rope_scaling != "yarn" or model.attention == "mla" \
            or model.learned_position_embeddings:
        return 0.0
    return (UNFUSED_ROPE_BYTES[0] + UNFUSED_ROPE_BYTES[1] - 3 * 2 * BF16) / 3


def expert_glu_clamp_unfused(model: ModelSpec, job: JobSpec) -> bool:
    """The experts' clamped GLU clamps outside the fused activation (``GLU_CLAMP_BYTES``): a clamped SwiGLU
    not run as Transformer Engine's fused grouped MLP (``JobSpec.fused_expert_mlp``)."""
    return model.clamped_glu and model.mlp == "swiglu" and not job.fused_expert_mlp


def unfused_expert_bytes(model: ModelSpec, job: JobSpec, ffn_columns: float) -> tuple[float, float]:
    """(forward, backward) bytes per routed (token, expert) pair that a clamped GLU and expert biases add
    as kernels of their own (``GLU_CLAMP_BYTES``, ``EXPERT_BIAS_BYTES``), on ``ffn_columns`` of the expert's
    intermediate width; (0, 0) for models without them and under Transformer Engine's fused grouped MLP
    (``JobSpec.fused_expert_mlp``), which scales the bias and clamps inside its kernels. The clamp's forward
    is part of what ``--recompute-modules moe_act`` repeats (recompute.py)."""
    if job.fused_expert_mlp or not model.is_moe:
        return 0.0, 0.0
    fwd = bwd = 0.0
    if expert_glu_clamp_unfused(model, job):
        fwd += GLU_CLAMP_BYTES[0] * ffn_columns
        bwd += GLU_CLAMP_BYTES[1] * ffn_columns
    if model.linear_bias:
        fwd += EXPERT_BIAS_BYTES[0] * model.hidden_size
        bwd += EXPERT_BIAS_BYTES[1] * model.hidden_size
    return fwd, bwd


UNFUSED_ROPE_KERNELS = (11, 6)
"""(forward, backward) kernels Megatron-Core's unfused rotary adds per tensor (q, then k) over the fused one
(one kernel each way): forward ``cos`` / ``sin`` of the frequencies with their ``* mscale`` and ``.to`` (6),
``t * cos``, the negation and ``cat`` of ``_rotate_half``, ``* sin``, the sum, the final ``cat`` (6), less the
fused kernel; backward the two products' gradients, the negation's, the halves' ``cat``, their sum and the
slice's zero fill and copy (7), less the fused kernel."""
GLU_CLAMP_KERNELS = (3, 7)
"""(forward, backward) kernels of the clamped GLU's clamps (``GLU_CLAMP_BYTES``): two clamps and a ``cat``;
backward the one-sided clamp's compare and ``where`` (2), the two-sided one's two compares, ``logical_and_``
and ``where`` (4), and the halves' gradients' ``cat`` (1)."""
EXPERT_BIAS_KERNELS_PER_EXPERT = (2, 4)
"""(forward, backward) kernels per local expert of ``_apply_bias`` (``EXPERT_BIAS_BYTES``): ``b * p`` and the
sum; backward the two products' gradients and their reductions; plus one ``cat`` each way."""


def unfused_kernels(model: ModelSpec, job: JobSpec, local_experts: float) -> tuple[float, float, float, float]:
    """(attention forward, attention backward, experts forward, experts backward) kernel launches per layer
    and micro-batch that the unfused operations of ``unfused_rope_bytes`` and ``unfused_expert_bytes`` add
    (``UNFUSED_ROPE_KERNELS`` for q and k; ``GLU_CLAMP_KERNELS``; ``EXPERT_BIAS_KERNELS_PER_EXPERT`` per local
    expert and one ``cat``); expert terms only on MoE layers (``local_experts`` > 0)."""
    attn_f = attn_b = moe_f = moe_b = 0.0
    if unfused_rope_bytes(model, job):
        attn_f, attn_b = 2.0 * UNFUSED_ROPE_KERNELS[0], 2.0 * UNFUSED_ROPE_KERNELS[1]
    if local_experts and not job.fused_expert_mlp:
        if expert_glu_clamp_unfused(model, job):
            moe_f, moe_b = GLU_CLAMP_KERNELS
        if model.linear_bias:
            moe_f += EXPERT_BIAS_KERNELS_PER_EXPERT[0] * local_experts + 1
            moe_b += EXPERT_BIAS_KERNELS_PER_EXPERT[1] * local_experts + 1
    return attn_f, attn_b, moe_f, moe_b


def attended_keys(seq_len: int, window: int) -> float:
    """Mean keys per query of causal attention over ``seq_len`` tokens: ``s / 2`` (the causal half), or
    with a sliding window of ``w`` keys (query i sees min(i, w) keys, i = 1..s) ``w - w (w - 1) / (2 s)``;
    both give (s + 1) / 2 at w = s, so the two agree where the window covers the sequence."""
    if not window or window >= seq_len:
        return 0.5 * seq_len
    return window - window * (window - 1) / (2.0 * seq_len)


FLASH_TILE_N = 128
"""Keys per K/V tile of the flash-attention kernels (FlashAttention-3/-4 and cuDNN's: ``n_block_size`` 128)."""


@lru_cache(maxsize=1024)
def computed_keys(seq_len: int, window: int, tile_m: int, tile_n: int = FLASH_TILE_N) -> float:
    """Mean keys per query that a tiled causal flash kernel computes, in whole ``tile_m x tile_n`` tiles.

    A CTA owns ``tile_m`` query rows ``[q0, q1)`` and loops over the K/V tiles its rows can see: causal, the
    tiles below ``ceil(q1 / tile_n)``; with a window of ``w`` keys (TE passes ``window_size = (w - 1, 0)``),
    from ``floor((q0 - w + 1) / tile_n)`` on (FlashAttention-4 ``BlockInfo.get_n_block_min_max``). Every
    score of those tiles goes through both GEMMs and the exponential; the masked ones are discarded after.
    Causal, that is the useful half plus half a diagonal tile per query (``s/2 + tile_m/2`` for aligned
    sequences); a 128-key window under 256-row query tiles spans 3 K tiles, 384 keys per query (the useful
    ones: ``attended_keys`` ~126)."""
    if seq_len <= 0:
        return 0.0
    total = 0.0
    for q0 in range(0, seq_len, tile_m):
        q1 = min(seq_len, q0 + tile_m)
        hi = -(-q1 // tile_n)
        lo = max(0, (q0 - window + 1) // tile_n) if 0 < window < seq_len else 0
        total += (hi - lo) * tile_n * (q1 - q0)
    return total / seq_len


def layer_work(model: ModelSpec, job: JobSpec, plan: Plan, index: int) -> LayerWork:
    h = model.hidden_size
    tp = plan.tp
    t = plan.micro_batch * job.seq_len / plan.cp
    sp_div = tp if plan.sp else 1
    fp8 = job.precision in ("fp8", "fp4")
    gemms: list[Gemm] = []
    # ---- attention ----
    heads = model.num_attention_heads / tp
    if model.attention == "mla":
        qk_d = model.qk_nope_head_dim + model.qk_rope_head_dim
        v_d = model.v_head_dim
        if model.q_lora_rank:
            gemms += [Gemm(t, model.q_lora_rank, h), Gemm(t, heads * qk_d, model.q_lora_rank)]
        else:
            gemms.append(Gemm(t, heads * qk_d, h))
        gemms += [Gemm(t, model.kv_lora_rank + model.qk_rope_head_dim, h),
                  Gemm(t, heads * (model.qk_nope_head_dim + v_d), model.kv_lora_rank),
                  Gemm(t, h, heads * v_d)]
        q_width, kv_width = heads * qk_d, heads * (qk_d + v_d) / 2
        head_sum = qk_d + v_d
        attn_out = heads * v_d
        d_qk, d_v = float(qk_d), float(v_d)
    else:
        d = model.kv_channels
        q_width = heads * d
        kv_width = model.num_kv_heads / tp * d
        gemms += [Gemm(t, q_width + 2 * kv_width, h), Gemm(t, h, q_width)]
        head_sum = 2 * d
        attn_out = q_width
        d_qk = d_v = float(d)
    window = model.attention_window(index)
    keys = attended_keys(job.seq_len, window)
    attention_flops = 2.0 * t * keys * heads * head_sum
    # ---- MLP / MoE ----
    swiglu = model.mlp == "swiglu"
    moe = model.layer_is_moe(index)
    ep_bytes = 0.0
    etp_bytes = 0.0
    tp_collectives = 2  # attention and MLP
    elem_split = 0.0
    expert_gemms: list[Gemm] = []
    pairs_per_expert = 0.0
    if moe:
        k = model.moe_topk
        shared = model.shared_expert_ffn_hidden_size or model.num_shared_experts * model.moe_ffn_hidden_size
        gemms.append(Gemm(t, model.num_experts, h, bf16=True))  # router
        if shared:
            gemms += _mlp_gemms(t, h, shared / tp, swiglu)
            elem_split += _mlp_act_bytes(shared / tp, swiglu, fp8)
        local_experts = model.num_experts / plan.ep
        pairs = t * k / tp * plan.etp  # token-expert pairs per rank, each on ffn/etp columns
        rows = pairs / local_experts
        expert_gemms = _mlp_gemms(rows, h, model.moe_ffn_hidden_size / plan.etp, swiglu, count=local_experts)
        gemms += expert_gemms
        pairs_per_expert = rows
        elem_split += (t * k / tp) * _mlp_act_bytes(model.moe_ffn_hidden_size, swiglu, fp8) / t
        # Clamp and expert-bias kernels outside the fused activation: the step model times a layer's
        # backward traffic as twice its forward's, so their forward + backward bytes enter as a third.
        extra_f, extra_b = unfused_expert_bytes(model, job, model.moe_ffn_hidden_size / plan.etp)
        elem_split += k / tp * plan.etp * (extra_f + extra_b) / 3
        # permute + unpermute copies of the routed tokens (read + write, bf16), probabilities.
        elem_split += k * h * BF16 * 4 / tp * plan.etp
        # router: fp32 logits written, softmax read + write, top-k read; per token and expert.
        elem_split += model.num_experts * 4 * 4 / tp
        if plan.ep > 1:
            ep_bytes = t / tp * k * h * BF16
        if plan.etp > 1:
            etp_bytes = t / tp * k * h * BF16 * plan.etp
        # TP collectives of an MoE layer: the attention's, and the shared experts' (a TP-split MLP on
        # every token); the routed experts' tokens travel by the dispatcher (etp_bytes), not by TP.
        tp_collectives = 1 + (1 if shared else 0)
    else:
        gemms += _mlp_gemms(t, h, model.ffn_hidden_size / tp, swiglu)
        elem_split += _mlp_act_bytes(model.ffn_hidden_size / tp, swiglu, fp8)
    # ---- memory-bound traffic per token ----
    drop = 1 if model.dropout else 0
    # Replicated over TP (split by SP): two norms (r+w), two residual adds (2r+w), dropout masks.
    repl = 2 * 2 * h * BF16 + 2 * 3 * h * BF16 + drop * 2 * (2 * h * BF16 + h)
    if fp8:
        repl += 2 * 3 * h  # casts of the QKV and fc1 inputs to fp8
    # Split over TP: rotary / bias on q and k, the attention output cast, MLP activations.
    split = 2 * (q_width + 2 * kv_width) * BF16 + (3 * attn_out if fp8 else 0) + elem_split
    if model.linear_bias:
        split += 2 * (q_width + 2 * kv_width + 2 * model.ffn_hidden_size / tp) * BF16
    split += unfused_rope_bytes(model, job) * (q_width + kv_width)
    if not job.compiled:
        extra_repl, extra_split = eager_extra_bytes(model, q_width, kv_width, model.ffn_hidden_size / tp,
                                                    moe=moe)
        repl += extra_repl
        split += extra_split
    elementwise = t * (repl / sp_div + split)
    cp_bytes = 0.0
    if plan.cp > 1:
        cp_bytes = t * 2 * kv_width * BF16 if model.attention != "mla" else t * heads * (head_sum) * BF16
    return LayerWork(gemms=tuple(gemms), attention_flops=attention_flops,
                     attention_kv_len=min(job.seq_len, window) if window else job.seq_len,
                     elementwise_bytes=elementwise, tp_bytes=t * h * BF16 if tp > 1 else 0.0,
                     tp_collectives=tp_collectives, cp_bytes=cp_bytes, ep_bytes=ep_bytes, etp_bytes=etp_bytes,
                     attn_batch=plan.micro_batch * heads, attn_q_len=job.seq_len / plan.cp, attn_d_qk=d_qk,
                     attn_d_v=d_v, expert_gemms=tuple(expert_gemms), pairs_per_expert=pairs_per_expert,
                     cp_a2a_bytes=t * (2 * (q_width + 2 * kv_width) + attn_out) * BF16 if plan.cp > 1 else 0.0,
                     attention_seq_len=float(job.seq_len),
                     attention_window=window if 0 < window < job.seq_len else 0,
                     extra_kernels=unfused_kernels(model, job, model.num_experts / plan.ep if moe else 0.0))


def head_work(model: ModelSpec, job: JobSpec, plan: Plan) -> LayerWork:
    """The LM head and the loss on the last stage (bf16 GEMM; fp32 softmax traffic)."""
    t = plan.micro_batch * job.seq_len / plan.cp
    vocab = model.padded_vocab_size(plan.tp) / plan.tp
    h = model.hidden_size
    elementwise = t * (vocab * (BF16 + 4 + 4) + 2 * h * BF16 / (plan.tp if plan.sp else 1))
    return LayerWork(gemms=(Gemm(t, vocab, h, bf16=True),), attention_flops=0.0, attention_kv_len=1.0,
                     elementwise_bytes=elementwise, tp_bytes=t * h * BF16 if plan.tp > 1 else 0.0,
                     tp_collectives=1 if plan.sp else 0, cp_bytes=0.0, ep_bytes=0.0)


def mtp_projection_work(model: ModelSpec, job: JobSpec, plan: Plan) -> LayerWork:
    """What one multi-token-prediction module (DeepSeek-V3; Megatron-Core ``MultiTokenPredictionLayer``)
    adds on the last stage besides its transformer layer and its own output head + loss: the
    embedding of the shifted tokens (a lookup), two RMSNorms (hidden state and embedding) and the
    ``eh_proj`` GEMM from the concatenated [h; e] (2h) back to h, column-parallel over TP; a final
    norm. Per token: norms read + write 3 x 2h bytes, the lookup and concatenation 2 x 2h each."""
    t = plan.micro_batch * job.seq_len / plan.cp
    h = model.hidden_size
    sp_div = plan.tp if plan.sp else 1
    elementwise = t * (3 * 2 * h * BF16 + 2 * 2 * h * BF16) / sp_div
    return LayerWork(gemms=(Gemm(t, h / plan.tp, 2 * h),), attention_flops=0.0, attention_kv_len=1.0,
                     elementwise_bytes=elementwise, tp_bytes=t * h * BF16 if plan.tp > 1 else 0.0,
                     tp_collectives=1 if plan.tp > 1 else 0, cp_bytes=0.0, ep_bytes=0.0)


def embedding_work(model: ModelSpec, job: JobSpec, plan: Plan) -> LayerWork:
    """The input embedding on the first stage: a gather, then an all-reduce over TP (vocab-parallel)."""
    t = plan.micro_batch * job.seq_len / plan.cp
    h = model.hidden_size
    return LayerWork(gemms=(), attention_flops=0.0, attention_kv_len=1.0, elementwise_bytes=t * h * BF16 * 2,
                     tp_bytes=t * h * BF16 if plan.tp > 1 else 0.0, tp_collectives=1, cp_bytes=0.0,
                     ep_bytes=0.0)


def flops_params(model: ModelSpec) -> int:
    """Parameters that cost matmul FLOPs per token: active parameters minus the input embedding
    (a table lookup) and learned position embeddings. A tied LM head is counted once, as the head."""
    lookup = model.learned_position_embeddings * model.hidden_size
    if not model.tied_embeddings:
        lookup += model.vocab_size * model.hidden_size
    return model.active_params - lookup


def attention_head_dim_sum(model: ModelSpec) -> float:
    if model.attention == "mla":
        return model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim
    return 2.0 * model.kv_channels


@lru_cache(maxsize=256)
def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Model FLOPs per trained token, forward + backward, no recompute (INTERFACE.md's MFU):

        6 * N  +  3 * L * seq_len * n_heads * (d_qk + d_v)

    ``N`` = ``flops_params`` (active parameters that do matmuls). The attention term counts the
    causal half of QK^T and PV: forward ``2 * s * n_heads * (d_qk + d_v) / 2`` per token and layer,
    times 3 for forward + backward. For MHA with n_heads * d = h it is ``6 * L * s * h``, half of the
    non-causal ``12 * L * s * h`` of the PaLM paper's appendix B.
    """
    attention = 3.0 * model.num_layers * seq_len * model.num_attention_heads * attention_head_dim_sum(model)
    return 6.0 * flops_params(model) + attention


__all__ = ["EXPERT_BIAS_BYTES", "FLASH_TILE_N", "GLU_CLAMP_BYTES", "Gemm", "LayerWork", "UNFUSED_ROPE_BYTES", "attended_keys", "computed_keys",
           "embedding_work", "expert_glu_clamp_unfused", "flops_params", "head_work", "layer_work",
           "model_flops_per_token", "unfused_expert_bytes", "unfused_kernels", "unfused_rope_bytes"]
