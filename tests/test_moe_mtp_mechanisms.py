"""MoE and multi-token-prediction mechanisms of issue 12 (session 4), each against a hand count.

* Megatron-Core applies the routing probabilities inside the expert activation, so an MoE layer keeps
  the fp32 probability per (token, expert) pair and no expert output for the unpermute.
* fp8 (delayed scaling) cannot recompute the norms or the MoE activation: the module ladder keeps the
  rest of each list.
* MTP (DeepSeek-V3): one more layer, its eh_proj and norms, its own embedding copy and output head + loss
  on the last pipeline stage - in memory and in the step.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator.cost.constants import load_calibration
from configurator.cost.step import evaluate, prepare
from configurator.cost.work import head_work, mtp_projection_work
from configurator.memory import (estimate_memory, layer_activation_parts, layer_kept_bytes, load_runtime,
                                 stage_params)
from configurator.profiles import load_cluster, load_model
from configurator.recompute import selective_module_ladder
from configurator.specs import JobSpec, Plan
from configurator.specs.plan import plan_violations

DEEPSEEK = load_model("deepseek-v3")
QWEN_MOE = load_model("qwen3-30b-a3b")
ONE_TOKEN = JobSpec(global_batch=8, seq_len=1)
CONSTANTS = load_calibration()


def test_moe_layer_keeps_probabilities_not_expert_outputs() -> None:
    parts = layer_activation_parts(QWEN_MOE, ONE_TOKEN, Plan(), 1)  # bf16, one token, TP1
    h, k, f = QWEN_MOE.hidden_size, QWEN_MOE.moe_topk, QWEN_MOE.moe_ffn_hidden_size
    assert "routed_out" not in parts
    assert parts["routed_probs"] == pytest.approx(k * 4)  # one fp32 probability per pair
    # routed total per token: fc1 input (2h), SwiGLU input (2 x 2f), fc2 input (2f), probability (4)
    routed = sum(parts[p] for p in ("routed_in", "routed_fc1_out", "routed_act_out", "routed_probs"))
    assert routed == pytest.approx(k * (2 * h + 4 * f + 2 * f + 4))


def test_fp8_module_ladder_drops_norms_and_moe_act_only() -> None:
    assert selective_module_ladder(DEEPSEEK, "fp8") == [
        (), ("mla_up_proj",), ("mla_up_proj", "shared_experts"), ("mla_up_proj", "moe"),
        ("mla_up_proj", "moe", "mlp")]
    assert selective_module_ladder(QWEN_MOE, "fp8") == [(), ("moe",)]
    assert selective_module_ladder(DEEPSEEK, "bf16") == selective_module_ladder(DEEPSEEK)
    job = JobSpec(global_batch=1024, seq_len=4096, precision="fp8")
    base = Plan(pp=16, dp=128, ep=64, recompute="selective", pipeline_layers=(4,) * 14 + (3, 2))
    for modules in selective_module_ladder(DEEPSEEK, "fp8")[1:]:
        assert plan_violations(DEEPSEEK, job, replace(base, recompute_modules=modules), 2048) == []


def test_mtp_adds_its_layer_projection_and_embedding_to_the_last_stage() -> None:
    plan = Plan(pp=2, dp=8, ep=8, tp=1)
    no_mtp = replace(DEEPSEEK, mtp_layers=0)
    layers = list(range(31, 61))
    dense, expert = stage_params(DEEPSEEK, plan, 1, layers)
    dense0, expert0 = stage_params(no_mtp, plan, 1, layers)
    h = DEEPSEEK.hidden_size
    layer_dense, layer_expert = DEEPSEEK.layer_params(60)
    # eh_proj 2h x h, three norms, one layer like the last, and the stage's own embedding copy (pp > 1)
    assert dense - dense0 == pytest.approx(2 * h * h + 3 * DEEPSEEK.norm_params + layer_dense
                                           + DEEPSEEK.padded_vocab_size(1) * h)
    assert expert - expert0 == pytest.approx(layer_expert / 8)
    # the first stage is untouched
    assert stage_params(DEEPSEEK, plan, 0, list(range(31))) == stage_params(no_mtp, plan, 0, list(range(31)))


def test_mtp_keeps_one_layer_and_its_own_logits_on_the_last_stage() -> None:
    job = JobSpec(global_batch=64, seq_len=4096, precision="bf16")
    plan = Plan(pp=2, dp=8, ep=8)
    cluster = load_cluster("h800-ib", num_gpus=16)
    rt = load_runtime("megatron")
    with_mtp = estimate_memory(DEEPSEEK, cluster, job, plan).stages[1].activations_bytes
    without = estimate_memory(replace(DEEPSEEK, mtp_layers=0), cluster, job, plan).stages[1].activations_bytes
    h, vocab = DEEPSEEK.hidden_size, DEEPSEEK.padded_vocab_size(1)
    own = 4096 * (2 * 2 * h * 2 + 4 * vocab)  # eh_proj input + the two norm inputs (bf16), fp32 logits
    assert with_mtp - without == pytest.approx(layer_kept_bytes(DEEPSEEK, job, plan, 60, rt) + own)


def test_mtp_step_runs_a_layer_projection_and_head_on_the_last_stage() -> None:
    job = JobSpec(global_batch=64, seq_len=4096, precision="bf16")
    plan = Plan(pp=2, dp=32, ep=8)
    cluster = load_cluster("h800-ib", num_gpus=64)
    inp = prepare(DEEPSEEK, cluster, job, plan)
    base = prepare(replace(DEEPSEEK, mtp_layers=0), cluster, job, plan)
    extra = inp.stages[-1].works[len(base.stages[-1].works):]
    assert [(n, moe) for _, n, moe in extra] == [(1, True), (1, False), (1, False)]
    assert extra[1][0] == mtp_projection_work(DEEPSEEK, job, plan)
    assert extra[2][0] == head_work(DEEPSEEK, job, plan)
    h = DEEPSEEK.hidden_size
    assert sum(g.flops for g in extra[1][0].gemms) == pytest.approx(2 * 4096 * h * 2 * h)  # [h; e] -> h
    assert inp.stages[0].works == base.stages[0].works
    slower = evaluate(inp, CONSTANTS).stage_busy_s[-1] - evaluate(base, CONSTANTS).stage_busy_s[-1]
    assert slower > 0


def test_gap_line_names_why_the_published_all_to_all_is_exposed() -> None:
    from configurator.cost.gap import gap_line, term_mechanism
    from configurator.cost.step import StepReport

    published = Plan(pp=16, dp=128, ep=64, recompute="selective", recompute_modules=("mla_up_proj",))
    top = Plan(tp=2, pp=4, vpp=7, dp=256, ep=16, sp=True, ep_overlap=True)
    why = term_mechanism("ep_comm", top, published)
    assert "needs an interleaved schedule (vpp > 1)" in why and "ep=16 instead of 64" in why
    assert "hides its own" in why
    assert "pp=16 vpp=1" in term_mechanism("pipeline_bubble", top, published)

    def report(step_s: float, ep: float) -> StepReport:
        terms = dict.fromkeys(("compute", "pipeline_bubble", "tp_comm", "cp_comm", "ep_comm", "pp_comm",
                               "dp_comm", "optimizer", "offload", "overhead"), 0.0)
        terms.update(compute=step_s - ep, ep_comm=ep)
        return StepReport(step_s=step_s, tokens_per_s_per_gpu=1e6 / step_s, model_tflops_per_gpu=0.0, mfu=0.0,
                          breakdown_s=tuple(terms.items()), compute_detail_s=(), critical_stage=0,
                          stage_busy_s=(step_s,), num_microbatches=1, bubble_fraction=0.0, runtime="megatron",
                          peak_flops=1.0)

    line = gap_line(report(20.0, 1.0), report(40.0, 12.0), best_plan=top, other_plan=published)
    assert line is not None and line.startswith("100% faster") and "; ep_comm: its all-to-all is exposed" in line
    assert gap_line(report(20.0, 1.0), report(22.0, 3.0), best_plan=top, other_plan=published) is None


def test_force_balanced_routing_leaves_only_sampling_noise() -> None:
    import math

    from configurator.cost.moe import busiest_rank_factor, routing_cv
    from configurator.runs import forced_balanced_routing

    mixtral = load_model("mixtral-8x7b")
    plan = Plan(dp=8, ep=8)
    forced = JobSpec(global_batch=8, seq_len=4096, moe_routing="force_balanced")
    learned = JobSpec(global_batch=8, seq_len=4096)
    assert routing_cv(forced, CONSTANTS) == 0.0
    assert routing_cv(learned, CONSTANTS) == CONSTANTS["moe.expert_load_cv"]
    # one expert per EP rank, 1,024 pairs each: cv_rank = sqrt(1/1024) = 1/32; the expected maximum of 8
    # standard normals is 1.4236 (tables of normal order statistics; Blom's formula gives 1.434)
    assert busiest_rank_factor(mixtral, plan, 1024, routing_cv(forced, CONSTANTS)) == pytest.approx(
        1 + 1.4236 / 32, abs=0.03 / 32)
    assert forced_balanced_routing("MoE: token distribution force-balanced, dropless.")
    assert not forced_balanced_routing("dropless, aux loss 1e-3")


def test_moe_routing_is_checked_by_name() -> None:
    from configurator.errors import InputError

    with pytest.raises(InputError, match="moe_routing"):
        JobSpec(global_batch=8, seq_len=4096, moe_routing="balanced")


def test_gap_line_blames_expert_imbalance_for_a_wider_ep_compute_gap() -> None:
    from configurator.cost.gap import term_mechanism

    hand = Plan(tp=2, pp=4, dp=32, ep=8, sp=True)
    top = Plan(tp=4, pp=2, vpp=8, dp=32, ep=1, etp=4, sp=True)
    assert "busiest one" in term_mechanism("compute", top, hand)
    assert "recomputes" in term_mechanism("compute", hand, replace(top, recompute="full"))


def test_expert_tp_gathers_the_dispatched_pairs_over_its_group() -> None:
    from configurator.cost.comm import LinkEfficiency
    from configurator.cost.step import _rates_for, _stage_times
    from configurator.cost.work import layer_work

    mixtral = load_model("mixtral-8x22b")
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(tp=4, etp=4, ep=1, dp=2, sp=True)
    work = layer_work(mixtral, job, plan, 0)
    # k x t x h x 2 B x etp / tp: each rank gathers every pair of the TP group's tokens (top-2 of 4,096)
    assert work.etp_bytes == pytest.approx(2 * 4096 * 6144 * 2)
    assert work.tp_collectives == 1  # attention only: Mixtral has no shared experts
    assert layer_work(DEEPSEEK, job, Plan(tp=2, ep=8, dp=32, sp=True), 5).tp_collectives == 2  # + shared
    assert layer_work(mixtral, job, replace(plan, etp=1), 0).etp_bytes == 0.0
    inp = prepare(mixtral, load_cluster("dgx-h100", num_gpus=8), job, plan)
    comm = inp.comm.with_efficiency(LinkEfficiency(nvlink=CONSTANTS["link.nvlink"],
                                                   scale_out=CONSTANTS["link.scale_out"]))
    fwd, _, _ = _stage_times(inp, _rates_for(inp, CONSTANTS), comm, CONSTANTS, 0)
    assert fwd["ep_comm"] == pytest.approx(mixtral.num_layers * comm.allreduce_s("etp", work.etp_bytes))


def test_gap_line_names_full_recompute_before_expert_imbalance() -> None:
    from configurator.cost.gap import term_mechanism

    top = Plan(tp=2, pp=4, vpp=4, dp=256, ep=16, sp=True, recompute="selective",
               recompute_modules=("mla_up_proj", "shared_experts"))
    published = Plan(pp=16, dp=128, ep=64, recompute="full")
    why = term_mechanism("compute", top, published)
    assert why.startswith("it recomputes whole layers (rc=full)") and "mla_up_proj" in why
