"""GPT-OSS's clamped GLU syncs the host with the GPU once per MoE layer forward in Megatron-Core (a device tensor
made from a Python float, cost/launch.py ``activation_syncs``), and once more where the activation is recomputed."""

from __future__ import annotations

import math
from dataclasses import replace

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost import CostConstants, estimate_step
from configurator.cost.constants import hardware_default
from configurator.cost.launch import GLU_SYNC_KERNELS_AFTER, activation_syncs, layer_launch_s

C = CostConstants.defaults()
GPT_OSS = load_model("gpt-oss-120b")
ALL_SCOPES = ("attn", "moe_router", "moe_preprocess")


def test_clamped_glu_syncs_once_forward_and_once_more_when_the_activation_is_recomputed() -> None:
    assert activation_syncs(True, False) == (1, 0)
    assert activation_syncs(True, True) == (1, 1)
    assert activation_syncs(True, True, ALL_SCOPES) == (1, 1)  # the graphed scopes leave the experts eager
    assert activation_syncs(True, True, ("full_iteration",)) == (0, 0)
    assert activation_syncs(False, True) == (0, 0)  # plain SwiGLU, or the fused grouped MLP


def test_glu_sync_term_by_hand() -> None:
    launch_s, sync_s = 10e-6, 20e-6
    # 100 us forward GPU work against 54 eager launches (440 us exposed), one dispatcher sync (20 + 8 x 10 us)
    # and one GLU sync (20 + 2 x 10 us); backward 108 launches against 200 us, plus the recompute's GLU sync.
    f, b = layer_launch_s(100e-6, 200e-6, True, launch_s, sync_s, syncs=1, act_syncs=(1, 1))
    assert GLU_SYNC_KERNELS_AFTER == 2
    assert math.isclose(f, 440e-6 + 100e-6 + 40e-6)
    assert math.isclose(b, 880e-6 + 40e-6)
    # a dense layer has no experts to sync for: its 24 / 48 launches alone
    assert layer_launch_s(100e-6, 200e-6, False, launch_s, sync_s, syncs=0, act_syncs=(1, 1)) == \
        layer_launch_s(100e-6, 200e-6, False, launch_s, sync_s, syncs=0)


def _launch_detail_s(job: JobSpec, plan: Plan) -> float:
    cluster = load_cluster("gb300-nvl72", num_gpus=64)
    return dict(estimate_step(GPT_OSS, cluster, job, plan, runtime="nemo", constants=C).compute_detail_s)["launch"]


def test_each_gpt_oss_moe_layer_pays_the_sync_per_micro_batch_unless_the_grouped_mlp_is_fused() -> None:
    # r089's shape: EP64, micro-batch 4 of 4096 tokens, GBS 1280 on 64 GPUs = 5 micro-batches, 36 MoE layers.
    # Its GPU work per layer (ms) covers every launch, so only the syncs are exposed: the fused grouped MLP
    # (no GLU sync) differs by 36 x 5 x (sync + 2 launches) forward, and twice that with moe_act recomputed.
    job = JobSpec(global_batch=1280, seq_len=4096, cuda_graphs=ALL_SCOPES)
    plan = Plan(dp=64, ep=64, micro_batch=4)
    # (GB300's Grace host dispatches each op at ``host_dispatch_ratio`` x the fitted launch cost)
    host = load_cluster("gb300-nvl72", num_gpus=64).host_dispatch_ratio
    per_sync = hardware_default("d2h_sync_s") + GLU_SYNC_KERNELS_AFTER * C["overhead.launch_s"] * host
    eager = _launch_detail_s(job, plan)
    fused = _launch_detail_s(replace(job, fused_expert_mlp=True), plan)
    assert math.isclose(eager - fused, 36 * 5 * per_sync, rel_tol=1e-9)
    recompute = replace(plan, recompute="selective", recompute_modules=("layernorm", "moe_act"))
    eager = _launch_detail_s(job, recompute)
    fused = _launch_detail_s(replace(job, fused_expert_mlp=True), recompute)
    assert math.isclose(eager - fused, 2 * 36 * 5 * per_sync, rel_tol=1e-9)


def test_the_remembered_clamp_answer_is_each_model_and_jobs_own_and_bounded() -> None:
    """``_stage_times`` reads whether the experts clamp outside a fused MLP from a small memo by (model, job) object:
    GPT-OSS unfused clamps, fused does not, Llama never; asked again (the memo's answers) the same; the memo never
    holds more than its limit."""
    from configurator.cost import step
    from configurator.cost.work import expert_glu_clamp_unfused

    llama = load_model("llama3-8b")
    unfused, fused = JobSpec(global_batch=8, seq_len=4096), JobSpec(global_batch=8, seq_len=4096, fused_expert_mlp=True)
    cases = [(GPT_OSS, unfused, True), (GPT_OSS, fused, False), (llama, unfused, False)]
    for _ in range(2):
        for model, job, expected in cases:
            assert step._glu_clamp_unfused(model, job) is expected is expert_glu_clamp_unfused(model, job)
    jobs = [JobSpec(global_batch=8 * (i + 1), seq_len=4096) for i in range(2 * step._GLU_CLAMP_LIMIT)]
    assert all(step._glu_clamp_unfused(GPT_OSS, job) for job in jobs)
    assert len(step._GLU_CLAMP) <= step._GLU_CLAMP_LIMIT
