"""CUDA graphs as a plan knob (``Plan.cuda_graphs``): what they capture, what their pool costs in memory, where
Megatron-Core refuses them, and how the search chooses them (on only where they shorten the step and fit)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost.launch import layer_launches, plan_graph_scopes
from configurator.cost.step import evaluate, prepare
from configurator.errors import InputError
from configurator.memory import estimate_memory, memory_constants
from configurator.search.knobs import best_knobs
from configurator.search.optimize import load_calibration, search
from configurator.search.resolve import costed_memory, fit_graphs
from configurator.search.space import SearchContext
from configurator.margin import NO_MARGIN, MemoryMargin
from configurator.specs.plan import cuda_graph_conflicts, plan_violations

C = load_calibration()
QWEN30 = load_model("qwen3-30b-a3b")
GB200_8 = load_cluster("gb200-nvl72", num_gpus=8)
FP8_512 = JobSpec(global_batch=512, seq_len=4096, precision="fp8")
SHARE = memory_constants()["cuda_graph_activation_share"]["value"]


def test_the_plan_captures_an_moe_layers_attention_and_router_and_a_dense_layers_whole() -> None:
    assert plan_graph_scopes(True) == ("attn", "moe_router", "moe_preprocess")
    assert plan_graph_scopes(False) == ("attn", "mlp")
    # a dense layer: attention (12) and MLP (12) kernels become one replay (2 launch-equivalents) each per pass
    assert layer_launches(False, ("attn", "mlp")) == (0 + 2 * 2, 0 + 2 * 2)
    # an MoE model's dense layer (DeepSeek-V3's first three) under the MoE scopes: attention only
    assert layer_launches(False, plan_graph_scopes(True)) == (12 + 2, 24 + 2)


def test_the_graphs_pool_is_a_fifth_of_each_ranks_activations_and_the_search_reports_it_the_same() -> None:
    plan = Plan(tp=1, pp=2, dp=4, ep=4, micro_batch=2, ep_dispatcher="alltoall")
    eager = estimate_memory(QWEN30, GB200_8, FP8_512, plan)
    graphed = estimate_memory(QWEN30, GB200_8, FP8_512, replace(plan, cuda_graphs=True))
    assert SHARE == 0.2  # NeMo's measured ~20% of activations (profiles/memory.json says where from)
    for e, g in zip(eager.stages, graphed.stages):
        assert g.activations_bytes == e.activations_bytes
        assert g.cuda_graph_bytes == e.activations_bytes * SHARE > 0
        assert g.total_bytes == e.total_bytes + g.cuda_graph_bytes
    assert graphed.as_dict()["breakdown_gib"]["cuda_graphs"] > 0 and "cuda_graphs" not in eager.as_dict()["breakdown_gib"]
    ctx = SearchContext(model=QWEN30, cluster=GB200_8, job=FP8_512)
    # what a search reports for the plan it costs with graphs is estimate_memory's, to the last bit
    assert costed_memory(ctx, eager, replace(plan, cuda_graphs=True)) == graphed


def test_megatron_cores_refusals() -> None:
    plan = Plan(dp=8, ep=8)
    assert cuda_graph_conflicts(plan, True) == []
    assert cuda_graph_conflicts(replace(plan, recompute="full"), True)
    assert cuda_graph_conflicts(replace(plan, recompute="selective", recompute_modules=("moe",)), True)
    assert not cuda_graph_conflicts(replace(plan, recompute="selective", recompute_modules=("moe_act",)), True)
    assert cuda_graph_conflicts(replace(plan, sharding="zero3", ep_overlap=True), True)
    assert not cuda_graph_conflicts(replace(plan, sharding="zero3", ep_overlap=False), True)
    # dropout with a recomputed graphed module; the alltoall dispatcher's capacity factor with moe_preprocess
    assert cuda_graph_conflicts(replace(plan, recompute="selective"), True, dropout=True)
    assert cuda_graph_conflicts(plan, True, moe_routing="capacity_padded")
    assert not cuda_graph_conflicts(replace(plan, ep_dispatcher="flex"), True, moe_routing="capacity_padded")
    bad = replace(plan, recompute="full", cuda_graphs=True)
    assert any(r.startswith("cuda_graphs:") for r in plan_violations(QWEN30, FP8_512, bad, 8))
    with pytest.raises(InputError, match="cuda_graphs"):
        Plan(dp=8, cuda_graphs="yes")  # type: ignore[arg-type]


def test_graphs_take_the_launches_off_a_launch_bound_plan_and_nothing_off_a_compute_bound_one() -> None:
    # Qwen3-30B-A3B at micro-batch 2 on a Grace host: its eager launches outlast the kernels
    small = Plan(dp=8, ep=8, micro_batch=2, ep_dispatcher="alltoall")
    eager = evaluate(prepare(QWEN30, GB200_8, FP8_512, replace(small, cuda_graphs=False)), C)
    graphed = evaluate(prepare(QWEN30, GB200_8, FP8_512, replace(small, cuda_graphs=True)), C)
    launch = dict(eager.compute_detail_s)["launch"] - dict(graphed.compute_detail_s)["launch"]
    assert graphed.graph_launch_saved_s > 0 and eager.graph_launch_saved_s == 0.0
    assert math.isclose(launch, graphed.graph_launch_saved_s, rel_tol=1e-9)  # one pipeline rank: all of it
    assert graphed.step_s < eager.step_s
    # Llama-3-70B at TP8 on H100s: every layer's kernels are long, graphs would change nothing
    llama, h100 = load_model("llama3-70b"), load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    big = Plan(tp=8, sp=True, dp=1, recompute="full")
    on = evaluate(prepare(llama, h100, job, replace(big, recompute="selective", cuda_graphs=True)), C)
    off = evaluate(prepare(llama, h100, job, replace(big, recompute="selective", cuda_graphs=False)), C)
    assert on.graph_launch_saved_s == 0.0 and on.step_s == off.step_s


def test_the_knob_search_turns_graphs_on_only_where_they_help() -> None:
    small = Plan(dp=8, ep=8, micro_batch=2, ep_dispatcher="alltoall")
    chosen, report = best_knobs(prepare(QWEN30, GB200_8, FP8_512, small), C)
    assert chosen.plan.cuda_graphs is True and report.graph_launch_saved_s > 0
    llama, h100 = load_model("llama3-70b"), load_cluster("dgx-h100", num_gpus=8)
    big = Plan(tp=8, sp=True, dp=1, recompute="selective")
    job = JobSpec(global_batch=64, seq_len=4096)
    chosen, report = best_knobs(prepare(llama, h100, job, big), C)
    assert chosen.plan.cuda_graphs is False and chosen.plan.tp_overlap  # (the TP overlap stays chosen)
    # open, tried, and turned back off: the same step without them, to the last bit
    assert report.step_s == evaluate(prepare(llama, h100, job, chosen.plan), C).step_s
    assert report.step_s == evaluate(prepare(llama, h100, job, replace(chosen.plan, cuda_graphs=True)), C).step_s


def test_graphs_whose_pool_would_not_fit_are_left_off() -> None:
    ctx = SearchContext(model=QWEN30, cluster=GB200_8, job=FP8_512)
    plan = Plan(dp=8, ep=8, micro_batch=4, ep_dispatcher="alltoall")
    memory = estimate_memory(QWEN30, GB200_8, FP8_512, plan)  # one pipeline rank: its stage is the peak
    pool = memory.peak.activations_bytes * SHARE
    free = memory.capacity_bytes - memory.peak_bytes
    assert free > pool > 0  # (about 14 GiB of pool in 30 GiB free)
    assert fit_graphs(ctx, plan, memory, NO_MARGIN).cuda_graphs is None  # fits: left open for the knob search
    just_room = MemoryMargin(gib=(free - pool) / 2**30 * 0.999)
    no_room = MemoryMargin(gib=(free - pool) / 2**30 * 1.001)
    assert fit_graphs(ctx, plan, memory, just_room).cuda_graphs is None
    assert fit_graphs(ctx, plan, memory, no_room).cuda_graphs is False
    # Megatron-Core's refusals that depend on the job are applied there too (a capacity factor's dispatcher sync)
    capped = SearchContext(model=QWEN30, cluster=GB200_8, job=replace(FP8_512, moe_routing="capacity_padded"))
    assert fit_graphs(capped, plan, memory, NO_MARGIN).cuda_graphs is False
    assert fit_graphs(ctx, replace(plan, cuda_graphs=True), memory, no_room).cuda_graphs is True  # fixed: its own


def test_a_search_on_a_grace_cluster_reports_its_graphs_and_their_memory() -> None:
    job = JobSpec(global_batch=256, seq_len=4096, precision="fp8")
    ctx = SearchContext(model=QWEN30, cluster=GB200_8, job=job)
    result = search(ctx, top_k=3, constants=C)
    best = result.ranked[0]
    graphed = [e for e in result.ranked if e.plan.cuda_graphs]
    for e in graphed:
        assert e.step.graph_launch_saved_s > 0 and "CUDA graphs take" in e.why
        assert e.memory == estimate_memory(QWEN30, GB200_8, job, e.plan)
        assert all(st.cuda_graph_bytes > 0 for st in e.memory.stages)
    for e in result.ranked:
        assert e.plan.cuda_graphs is not None  # the search settles the knob either way
    assert best.memory.fits
