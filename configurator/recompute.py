"""What Megatron-Core's selective recompute (``--recompute-modules``) repeats, as shares of a layer's
forward, so the step-time model can charge for it (``cost/step.py``) while ``memory.py`` credits
the activations it drops (``RECOMPUTE_MODULE_PARTS``).

Per layer and module, the share of the layer's forward that runs again in the backward:

* ``gemm``: share of the layer's forward GEMM FLOPs (``mlp``: the dense MLP's fc1 + fc2; ``moe``: router,
  shared and routed experts; ``shared_experts``: the shared experts; ``mla_up_proj``: MLA's q and kv up
  projections);
* ``attention``: share of the attention-core FLOPs (``core_attn``: all of it);
* ``elementwise``: share of the memory-bound bytes (``layernorm``: the two norms; ``moe_act`` / ``mlp`` /
  ``moe`` / ``shared_experts``: their activation functions);
* ``ep_comm``: share of the forward's EP all-to-all repeated (``moe``: dispatch and combine run again).

Counts per token on one rank, with the layouts of ``cost/work.py`` (TP splits the attention and MLP
widths; a rank computes ``k / tp * etp`` routed pairs on ``1/etp`` of each expert's columns). Norm,
activation and permute traffic use the same byte counts as ``work.py`` (read + write, bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from configurator.cost.work import GLU_CLAMP_BYTES, expert_glu_clamp_unfused
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan

BF16 = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class RecomputeShares:
    """Shares (0..1) of one layer's forward repeated in its backward by selective recompute."""

    gemm: float = 0.0
    attention: float = 0.0
    elementwise: float = 0.0
    ep_comm: float = 0.0


def _mlp_flops(h: float, ffn: float, swiglu: bool) -> float:
    return 2 * h * (2 * ffn if swiglu else ffn) + 2 * ffn * h


def _act_bytes(ffn: float, swiglu: bool) -> float:
    return (3 * ffn if swiglu else 2 * ffn) * BF16


def module_forward_counts(model: ModelSpec, plan: Plan, index: int,
                          job: JobSpec | None = None) -> dict[str, dict[str, float]]:
    """Per module: forward GEMM FLOPs and memory-bound bytes per token on one rank (and the layer totals
    under ``"layer"``). With ``job``, ``moe_act`` includes the clamp kernels of a clamped GLU that run outside
    the fused activation (``cost/work.py``'s ``unfused_expert_bytes``; they are inside the recomputed
    ``bias_act_func``)."""
    h, tp = model.hidden_size, plan.tp
    sp_div = tp if plan.sp else 1
    swiglu = model.mlp == "swiglu"
    if model.attention == "mla":
        heads = model.num_attention_heads / tp
        qk_d = model.qk_nope_head_dim + model.qk_rope_head_dim
        up = 2 * model.q_lora_rank * heads * qk_d + 2 * model.kv_lora_rank * heads * (model.qk_nope_head_dim + model.v_head_dim)
        down = (2 * h * model.q_lora_rank if model.q_lora_rank else 2 * h * heads * qk_d) \
            + 2 * h * (model.kv_lora_rank + model.qk_rope_head_dim) + 2 * heads * model.v_head_dim * h
        attn_gemm = up + down
    else:
        q = model.num_attention_heads * model.kv_channels
        kv = model.num_kv_heads * model.kv_channels
        up = 0.0
        attn_gemm = (2 * h * (q + 2 * kv) + 2 * q * h) / tp
    norms = 2 * 2 * h * BF16 / sp_div
    out: dict[str, dict[str, float]] = {
        "mla_up_proj": {"gemm": up, "bytes": 0.0},
        "layernorm": {"gemm": 0.0, "bytes": norms},
        "core_attn": {"gemm": 0.0, "bytes": 0.0},
    }
    if model.layer_is_moe(index):
        k = model.moe_topk
        shared = model.shared_expert_ffn_hidden_size or model.num_shared_experts * model.moe_ffn_hidden_size
        router = 2 * h * model.num_experts
        shared_f = _mlp_flops(h, shared / tp, swiglu) if shared else 0.0
        routed_f = k / tp * _mlp_flops(h, model.moe_ffn_hidden_size, swiglu)
        act = k / tp * _act_bytes(model.moe_ffn_hidden_size, swiglu)
        if job is not None and expert_glu_clamp_unfused(model, job):
            act += k / tp * GLU_CLAMP_BYTES[0] * model.moe_ffn_hidden_size
        permute = k * h * BF16 * 4 / tp * plan.etp
        shared_b = _act_bytes(shared / tp, swiglu) if shared else 0.0
        out["moe"] = {"gemm": router + shared_f + routed_f, "bytes": act + permute + shared_b}
        out["moe_act"] = {"gemm": 0.0, "bytes": act}
        out["shared_experts"] = {"gemm": shared_f, "bytes": shared_b}
        out["mlp"] = {"gemm": 0.0, "bytes": 0.0}
        mlp_gemm, mlp_bytes = out["moe"]["gemm"], out["moe"]["bytes"]
    else:
        f = model.ffn_hidden_size / tp
        out["mlp"] = {"gemm": _mlp_flops(h, f, swiglu), "bytes": _act_bytes(f, swiglu)}
        for name in ("moe", "moe_act", "shared_experts"):
            out[name] = {"gemm": 0.0, "bytes": 0.0}
        mlp_gemm, mlp_bytes = out["mlp"]["gemm"], out["mlp"]["bytes"]
    residual = 2 * 3 * h * BF16 / sp_div
    out["layer"] = {"gemm": attn_gemm + mlp_gemm, "bytes": norms + residual + mlp_bytes}
    return out


def recompute_shares(model: ModelSpec, job: JobSpec, plan: Plan, index: int) -> RecomputeShares:
    """Shares of layer ``index``'s forward repeated under ``plan``'s selective recompute modules
    (Megatron's default ``core_attn`` when the list is empty). Full recompute is not handled here
    (it repeats the whole forward of the recomputed layers)."""
    if plan.recompute != "selective":
        return RecomputeShares()
    modules = plan.recompute_modules or ("core_attn",)
    counts = module_forward_counts(model, plan, index, job)  # per token: the sequence length cancels
    layer = counts["layer"]
    gemm = sum(counts[m]["gemm"] for m in modules if m != "core_attn")
    nbytes = sum(counts[m]["bytes"] for m in modules if m != "core_attn")
    if "moe" in modules:  # moe contains moe_act and shared_experts: count them once
        gemm -= sum(counts[m]["gemm"] for m in ("moe_act", "shared_experts") if m in modules)
        nbytes -= sum(counts[m]["bytes"] for m in ("moe_act", "shared_experts") if m in modules)
    moe_layer = model.layer_is_moe(index)
    return RecomputeShares(
        gemm=min(1.0, gemm / layer["gemm"]) if layer["gemm"] else 0.0,
        attention=1.0 if "core_attn" in modules else 0.0,
        elementwise=min(1.0, nbytes / layer["bytes"]) if layer["bytes"] else 0.0,
        ep_comm=1.0 if ("moe" in modules and moe_layer and plan.ep > 1) else 0.0)


MEGATRON_RUNTIMES = ("megatron", "nemo")
"""Runtimes on Megatron-Core, where ``--recompute-modules`` and Megatron-FSDP exist."""


FP8_DELAYED_NO_RECOMPUTE = ("layernorm", "moe_act")
"""Modules Megatron-Core refuses to recompute under fp8 with its default delayed-scaling recipe
(transformer_config.py 0.19.2: "Delayed scaling does not support moe_act and layernorm recompute")."""


def selective_module_ladder(model: ModelSpec, precision: str | None = None) -> list[tuple[str, ...]]:
    """``--recompute-modules`` lists from least to most recompute, as Megatron-Core's MoE and long-context
    recipes add them: Megatron's default (core_attn), the norms, the MoE activation (and MLA's up
    projection), the shared experts, then the whole MLP / MoE layer. A row that says "selective" but
    not which modules takes the first list under which it fits (``validate`` says so).

    Under ``precision="fp8"`` (delayed scaling) the norms and the MoE activation cannot be recomputed;
    the ladder keeps the rest of each list (MLA up projection, shared experts, whole MoE/MLP) instead of
    losing every step that names them, so fp8 MoE plans still have partial recompute between none and
    full."""
    ladder = _module_ladder(model)
    if precision != "fp8":
        return ladder
    out: list[tuple[str, ...]] = []
    for modules in ladder:
        kept = tuple(m for m in modules if m not in FP8_DELAYED_NO_RECOMPUTE)
        if modules and not kept:
            continue
        if kept not in out:
            out.append(kept)
    return out


def _module_ladder(model: ModelSpec) -> list[tuple[str, ...]]:
    ladder: list[tuple[str, ...]] = [(), ("layernorm",)]
    if model.is_moe:
        step = ("layernorm", "moe_act") + (("mla_up_proj",) if model.attention == "mla" else ())
        ladder.append(step)
        if model.num_shared_experts or model.shared_expert_ffn_hidden_size:
            ladder.append(step + ("shared_experts",))
        ladder.append(tuple(m for m in step if m != "moe_act") + ("moe",))
    elif model.attention == "mla":
        ladder.append(("layernorm", "mla_up_proj"))
    if model.first_dense_layers or not model.is_moe:
        ladder.append(ladder[-1] + ("mlp",))
    return ladder


__all__ = ["FP8_DELAYED_NO_RECOMPUTE", "MEGATRON_RUNTIMES", "RecomputeShares", "module_forward_counts", "recompute_shares",
           "selective_module_ladder"]
