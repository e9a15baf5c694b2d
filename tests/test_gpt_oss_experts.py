"""GPT-OSS's experts in Megatron-Core: the clamped GLU and the fc2 bias run as kernels of their own unless
Transformer Engine's fused grouped MLP runs them; the Megatron-Bridge GPT-OSS recipes' recompute and fusion."""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator.cost.launch import layer_launches
from configurator.cost.work import (EXPERT_BIAS_BYTES, GLU_CLAMP_BYTES, UNFUSED_ROPE_BYTES, layer_work,
                                   unfused_expert_bytes, unfused_kernels, unfused_rope_bytes)
from configurator.profiles import load_model
from configurator.recompute import recompute_shares
from configurator.runs import (case_from_row, recipe_ep_overlap, recipe_fused_expert_mlp,
                              recipe_recompute_modules)
from configurator.specs import JobSpec, Plan

GPT_OSS = load_model("gpt-oss-120b")
JOB = JobSpec(global_batch=64, seq_len=4096)
BRIDGE_2604 = "Megatron-Bridge performance summary (NeMo 26.04.01 container)"
BRIDGE_2608 = "Megatron-Bridge performance summary (NeMo 26.08 container)"


def test_clamp_and_expert_bias_bytes_by_hand() -> None:
    # Clamp, per element of the ffn columns: forward 2 clamps (r+w 2 B on half of 2 ffn each = 4 ffn B each)
    # + cat (r+w the whole 2 ffn = 8 ffn B) = 16; backward 8 + 14 (the two clamps' masks and wheres) + 8 (the
    # halves' gradients concatenated) = 30.
    assert GLU_CLAMP_BYTES == (16, 30)
    # Bias, per element of h: forward b*p write 2, add r4 w2, cat r2 w2 = 12; backward two products with
    # their reductions (r2 w2 r2 each) + the split gradient's cat (r2 w2) = 16.
    assert EXPERT_BIAS_BYTES == (12, 16)
    fwd, bwd = unfused_expert_bytes(GPT_OSS, JOB, 2880)
    assert fwd == 16 * 2880 + 12 * 2880 == 80640
    assert bwd == 30 * 2880 + 16 * 2880 == 132480


def test_fused_grouped_mlp_and_plain_moe_add_nothing() -> None:
    assert unfused_expert_bytes(GPT_OSS, replace(JOB, fused_expert_mlp=True), 2880) == (0.0, 0.0)
    plain = replace(GPT_OSS, linear_bias=False, features=("sliding_window=128", "sliding_window_every=2"))
    assert unfused_expert_bytes(plain, JOB, 2880) == (0.0, 0.0)
    assert not load_model("qwen3-30b-a3b").clamped_glu


def test_layer_traffic_grows_by_a_third_of_forward_plus_backward_per_routed_pair() -> None:
    plan = Plan(dp=64, ep=64, micro_batch=1)
    eager = layer_work(GPT_OSS, JOB, plan, 1).elementwise_bytes
    fused = layer_work(GPT_OSS, replace(JOB, fused_expert_mlp=True), plan, 1).elementwise_bytes
    # 4096 tokens x top-4 pairs x (80640 + 132480) / 3 bytes (the step model times backward as 2x forward)
    assert eager - fused == pytest.approx(4096 * 4 * (80640 + 132480) / 3)


def test_moe_act_recompute_repeats_the_clamp_forward() -> None:
    plan = Plan(dp=64, ep=64, recompute="selective", recompute_modules=("moe_act",))
    eager = recompute_shares(GPT_OSS, JOB, plan, 1).elementwise
    fused = recompute_shares(GPT_OSS, replace(JOB, fused_expert_mlp=True), plan, 1).elementwise
    assert eager > fused > 0


def test_bridge_gpt_oss_recipes_recompute_and_fusion() -> None:
    for system in ("gb200-nvl72", "dgx-b200", "dgx-h100"):
        assert recipe_recompute_modules(BRIDGE_2604, "", "GPT OSS 120B", system) == ("layernorm", "moe_act")
    assert recipe_recompute_modules(BRIDGE_2604, "", "GPT OSS 120B", "gb300-nvl72") == ()
    assert recipe_recompute_modules(BRIDGE_2608, "", "GPT OSS 120B", "gb200-nvl72") == ()
    assert recipe_recompute_modules(BRIDGE_2604, "", "Qwen3_30B_a3B", "gb200-nvl72") == ()
    assert recipe_fused_expert_mlp(BRIDGE_2608, "GPT OSS 120B", "gb300-nvl72", "fp8")
    assert not recipe_fused_expert_mlp(BRIDGE_2608, "GPT OSS 120B", "gb300-nvl72", "bf16")
    assert not recipe_fused_expert_mlp(BRIDGE_2604, "GPT OSS 120B", "gb300-nvl72", "fp8")
    # GB200's GBS-1280 config overlaps the all-to-all from 26.04 (v0.4.x) on, not in 26.02 (v0.3.x)
    assert recipe_ep_overlap(BRIDGE_2604, "GPT OSS 120B", "gb200-nvl72", "bf16", (1, 1, 1, 64), 1280)
    assert not recipe_ep_overlap(BRIDGE_2604, "GPT OSS 120B", "gb200-nvl72", "bf16", (1, 1, 1, 64), 512)
    assert not recipe_ep_overlap(BRIDGE_2604, "GPT OSS 120B", "gb300-nvl72", "bf16", (1, 1, 1, 64), 1280)
    assert not recipe_ep_overlap("Megatron-Bridge performance summary (NeMo 26.02 container)", "GPT OSS 120B",
                                 "gb200-nvl72", "bf16", (1, 1, 1, 64), 1280)


def test_published_gpt_oss_rows_take_the_recipes_settings() -> None:
    row = {"run_id": "x", "source": BRIDGE_2604, "model": "GPT OSS 120B", "layers": "36", "hidden": "2880",
           "ffn_hidden": "2880", "heads": "64", "kv_heads": "8", "vocab": "201088", "seq_len": "4096",
           "mlp": "swiglu", "attention": "gqa", "moe_experts": "128", "moe_topk": "4", "moe_ffn_hidden": "2880",
           "gpu": "gb200", "system": "gb200-nvl72", "num_gpus": "64", "tp": "1", "pp": "1", "ep": "64",
           "micro_batch": "4", "global_batch": "1280", "precision": "bf16", "sharding": "distopt"}
    case = case_from_row(row)
    assert not case.error, case.error
    assert case.model is not None and case.model.clamped_glu and case.model.linear_bias
    assert case.model.rope_scaling == "yarn"
    assert case.plan is not None and case.plan.recompute_modules == ("layernorm", "moe_act")
    assert not case.recompute_unknown
    assert case.plan.ep_overlap is True
    fp8 = case_from_row(dict(row, source=BRIDGE_2608, system="gb300-nvl72", gpu="gb300", precision="fp8", ep="16"))
    assert fp8.job is not None and fp8.job.fused_expert_mlp
    assert fp8.plan is not None and fp8.plan.recompute == "none"


def test_yarn_rope_runs_unfused_on_standard_attention_only() -> None:
    # (24 + 26) bytes per q/k element unfused, of which the fused count already has 4 forward + 8 backward;
    # a third of the rest enters as forward traffic (backward is timed as twice the forward).
    assert UNFUSED_ROPE_BYTES == (24, 26)
    assert unfused_rope_bytes(GPT_OSS, JOB) == pytest.approx(38 / 3)
    plan = Plan(dp=64, ep=64, micro_batch=1)
    plain_rope = replace(GPT_OSS, rope_scaling="", rope_scaling_factor=1.0)
    extra = layer_work(GPT_OSS, JOB, plan, 1).elementwise_bytes - layer_work(plain_rope, JOB, plan, 1).elementwise_bytes
    assert extra == pytest.approx(4096 * 38 / 3 * (64 * 64 + 8 * 64))  # q (64 heads) + k (8 KV heads) of 64
    assert unfused_rope_bytes(load_model("deepseek-v3"), JOB) == 0.0  # MLA keeps --position-embedding-type rope
    assert unfused_rope_bytes(GPT_OSS, replace(JOB, compiled=False)) == 0.0  # eager: eager_extra_bytes counts it


def test_unfused_operations_add_their_kernel_launches() -> None:
    # rope on q and k: (12 - 1) forward and (7 - 1) backward each; clamp 3 / 7; bias 2 / 4 per local expert
    # plus one cat each way: at 2 local experts (EP64 of 128) forward 3 + 5, backward 7 + 9.
    assert unfused_kernels(GPT_OSS, JOB, 2) == (22.0, 12.0, 8.0, 16.0)
    assert unfused_kernels(GPT_OSS, replace(JOB, fused_expert_mlp=True), 2) == (22.0, 12.0, 0.0, 0.0)
    assert unfused_kernels(GPT_OSS, JOB, 0) == (22.0, 12.0, 0.0, 0.0)  # a dense layer has no experts
    plain = layer_launches(True, (), 2)
    extra = (22.0, 12.0, 8.0, 16.0)
    assert layer_launches(True, (), 2, extra) == (plain[0] + 30, plain[1] + 28)
    graphed = ("attn", "moe_router", "moe_preprocess")
    # the attn graph captures the rotary kernels; the experts' stay eager
    assert layer_launches(True, graphed, 2, extra) == tuple(
        x + y for x, y in zip(layer_launches(True, graphed, 2), (8.0, 16.0)))
    assert layer_launches(True, ("full_iteration",), 2, extra) == (0.0, 0.0)
