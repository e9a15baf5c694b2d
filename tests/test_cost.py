"""The step-time model: sanity properties that must hold for any constants, and its arithmetic."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configurator import JobSpec, Plan, load_cluster, load_model, plan_violations
from configurator.cost import CostConstants, estimate_step, evaluate, prepare
from configurator.cost.comm import CommModel, LinkEfficiency
from configurator.cost.schedule import simulate
from configurator.cost.work import flops_params, model_flops_per_token
from configurator.placement import Placement, groups
from configurator.specs.hardware import LinkSpec

CONSTANTS = CostConstants.defaults()
LLAMA8B = load_model("llama3-8b")


def step(model, cluster, job, plan, **kw):  # type: ignore[no-untyped-def]
    assert not plan_violations(model, job, plan, cluster.num_gpus), plan_violations(model, job, plan, cluster.num_gpus)
    return estimate_step(model, cluster, job, plan, constants=kw.pop("constants", CONSTANTS), **kw)


def test_tp1_means_no_tp_communication() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    assert step(LLAMA8B, cluster, job, Plan(dp=8)).term("tp_comm") == 0.0
    assert step(LLAMA8B, cluster, job, Plan(tp=2, dp=4, sp=True)).term("tp_comm") > 0.0


def test_breakdown_adds_up_to_the_step() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=256, seq_len=8192)
    report = step(load_model("llama3-70b"), cluster, job, Plan(tp=4, pp=4, vpp=5, cp=2, dp=2, sp=True))
    assert math.isclose(sum(v for _, v in report.breakdown_s), report.step_s, rel_tol=1e-9)
    assert report.term("pipeline_bubble") > 0 and report.term("dp_comm") >= 0
    assert math.isclose(report.tokens_per_s_per_gpu, job.tokens_per_step / report.step_s / 64)


@pytest.mark.parametrize(("p", "m"), [(2, 2), (4, 8), (8, 8), (8, 64), (16, 16), (5, 13)])
def test_1f1b_bubble_fraction_with_equal_stages(p: int, m: int) -> None:
    result = simulate(pp=p, vpp=1, num_microbatches=m, forward_s=[1.0] * p, backward_s=[2.0] * p,
                      send_forward_s=[0.0] * p, send_backward_s=[0.0] * p)
    busy = m * 3.0
    assert math.isclose((result.makespan_s - busy) / result.makespan_s, (p - 1) / (m + p - 1), rel_tol=1e-12)


@pytest.mark.parametrize(("p", "v", "m"), [(2, 2, 4), (4, 2, 8), (4, 3, 8), (8, 4, 16)])
def test_interleaved_bubble_shrinks_by_the_virtual_stages(p: int, v: int, m: int) -> None:
    stages = p * v
    result = simulate(pp=p, vpp=v, num_microbatches=m, forward_s=[1.0 / v] * stages,
                      backward_s=[2.0 / v] * stages, send_forward_s=[0.0] * p, send_backward_s=[0.0] * p)
    busy = m * 3.0
    # Narayanan et al. 2021: bubble time (p-1)/v of a micro-batch's forward + backward.
    assert math.isclose(result.makespan_s - busy, (p - 1) * 3.0 / v, rel_tol=1e-12)


def _measured_cluster(num_nodes: int, slow: dict[tuple[int, int], float] | None = None):  # type: ignore[no-untyped-def]
    """A dgx-h100 profile with a per-node-pair matrix; ``slow`` maps (src, dst) to a bandwidth factor."""
    base = load_cluster("dgx-h100", nodes=num_nodes)
    so = base.scale_out_link
    slow = slow or {}
    links = tuple(tuple(None if a == b else LinkSpec(bandwidth_Bps=so.bandwidth_Bps * slow.get((a, b), 1.0),
                                                      latency_s=so.latency_s)
                        for b in range(num_nodes)) for a in range(num_nodes))
    return replace(base, node_links=links)


def test_a_slow_stage_boundary_lengthens_the_critical_path_by_at_least_its_transfer() -> None:
    job = JobSpec(global_batch=32, seq_len=4096)
    plan = Plan(tp=8, pp=4, dp=1, sp=True)  # one stage per node: every boundary crosses nodes
    fast = _measured_cluster(4)
    slow = _measured_cluster(4, {(1, 2): 0.05, (2, 1): 0.05})
    inp_fast = prepare(LLAMA8B, fast, job, plan)
    a = evaluate(inp_fast, CONSTANTS)
    b = estimate_step(LLAMA8B, slow, job, plan, constants=CONSTANTS)
    eff = LinkEfficiency(nvlink=CONSTANTS["link.nvlink"], scale_out=CONSTANTS["link.scale_out"])
    t_fast = CommModel(fast, plan, None, eff).p2p_stage_s(1, inp_fast.p2p_bytes)
    t_slow = CommModel(slow, plan, None, eff).p2p_stage_s(1, inp_fast.p2p_bytes)
    assert t_slow > 10 * t_fast
    assert b.step_s - a.step_s >= (t_slow - t_fast) * (1 - 1e-9)
    assert b.term("pp_comm") > a.term("pp_comm")


def _scaled(cluster, factor: float):  # type: ignore[no-untyped-def]
    def s(link: LinkSpec) -> LinkSpec:
        return LinkSpec(bandwidth_Bps=link.bandwidth_Bps * factor, latency_s=link.latency_s)

    links = cluster.node_links
    if links is not None:
        links = tuple(tuple(None if x is None else s(x) for x in row) for row in links)
    return replace(cluster, intra_domain_link=s(cluster.intra_domain_link), scale_out_link=s(cluster.scale_out_link),
                   node_links=links)


PLANS = st.builds(
    lambda tp, pp, vpp, cp, mb, sharding, recompute, offload: dict(
        tp=tp, pp=pp, vpp=vpp if pp > 1 else 1, cp=cp, micro_batch=mb, sharding=sharding, recompute=recompute,
        offload=offload if sharding != "none" else 0.0),
    st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2]), st.sampled_from([1, 2]),
    st.sampled_from([1, 2]), st.sampled_from(["none", "zero1", "distopt", "zero2", "zero3"]),
    st.sampled_from(["none", "selective", "full"]), st.sampled_from([0.0, 0.5, 1.0]))


def _legal(kw: dict, num_gpus: int, model, job):  # type: ignore[no-untyped-def]
    mp = kw["tp"] * kw["pp"] * kw["cp"]
    if num_gpus % mp:
        return None
    plan = Plan(dp=num_gpus // mp, sp=kw["tp"] > 1, **kw)
    return None if plan_violations(model, job, plan, num_gpus) else plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(kw=PLANS, nodes=st.sampled_from([1, 2, 4]), runtime=st.sampled_from(["megatron", "nemo", "fsdp", "deepspeed"]))
def test_doubling_every_link_never_slows_a_plan(kw: dict, nodes: int, runtime: str) -> None:
    job = JobSpec(global_batch=64, seq_len=4096)
    cluster = _measured_cluster(nodes, {(0, nodes - 1): 0.3}) if nodes > 1 else load_cluster("dgx-h100", nodes=1)
    plan = _legal(kw, cluster.num_gpus, LLAMA8B, job)
    if plan is None:
        return
    a = estimate_step(LLAMA8B, cluster, job, plan, runtime=runtime, constants=CONSTANTS)
    b = estimate_step(LLAMA8B, _scaled(cluster, 2.0), job, plan, runtime=runtime, constants=CONSTANTS)
    assert b.step_s <= a.step_s * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(kw=PLANS, precision=st.sampled_from(["bf16", "fp8"]), seq=st.sampled_from([2048, 8192]))
def test_throughput_never_exceeds_the_peak(kw: dict, precision: str, seq: int) -> None:
    cluster = load_cluster("dgx-h100", nodes=2)
    job = JobSpec(global_batch=64, seq_len=seq, precision=precision)
    plan = _legal(kw, cluster.num_gpus, LLAMA8B, job)
    if plan is None:
        return
    for constants in (CONSTANTS, CostConstants.from_dict({**CONSTANTS.as_dict(), "gemm.hopper.bf16": 1.0,
                                                           "gemm.hopper.fp8": 1.0, "attention.hopper": 1.0,
                                                           "gemm.half_dim": 4.0})):
        report = estimate_step(LLAMA8B, cluster, job, plan, constants=constants)
        assert report.model_tflops_per_gpu * 1e12 <= cluster.gpu.peak_flops_for(precision)
        assert 0 < report.mfu <= 1.0


def test_recompute_and_offload_cost_time() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    base = Plan(tp=2, dp=4, sp=True)
    t0 = step(LLAMA8B, cluster, job, base)
    full = step(LLAMA8B, cluster, job, replace(base, recompute="full"))
    half = step(LLAMA8B, cluster, job, replace(base, recompute="full", recompute_num_layers=16))
    assert t0.step_s < half.step_s < full.step_s
    off = step(LLAMA8B, cluster, job, replace(base, offload=1.0))
    assert off.term("offload") > 0 and off.step_s > t0.step_s
    assert off.term("optimizer") == 0.0  # nothing left on the GPU


def test_uneven_pipeline_split_puts_the_critical_path_on_the_heavier_stage() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=4096)
    even = step(LLAMA8B, cluster, job, Plan(tp=4, pp=4, dp=1, sp=True))
    uneven = step(LLAMA8B, cluster, job, Plan(tp=4, pp=4, dp=1, sp=True, pipeline_layers=(8, 12, 6, 6)))
    assert uneven.critical_stage == 1
    assert uneven.step_s > even.step_s


def test_expert_parallel_across_nodes_costs_more_than_inside_a_node() -> None:
    qwen = load_model("qwen3-30b-a3b")  # 128 experts
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=4096)
    inside = step(qwen, cluster, job, Plan(dp=16, ep=8))    # expert groups = one node each
    across = step(qwen, cluster, job, Plan(dp=16, ep=16))   # every expert group spans both nodes
    assert inside.term("ep_comm") > 0
    assert across.term("ep_comm") > 2 * inside.term("ep_comm")
    assert step(qwen, cluster, job, Plan(dp=16, ep=1)).term("ep_comm") == 0.0


def test_default_placement_is_megatron_order() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=32)
    plan = Plan(tp=2, pp=2, cp=2, dp=4)
    assert list(groups(plan, "tp")[0]) == [0, 1]
    assert list(groups(plan, "cp")[0]) == [0, 2]
    assert list(groups(plan, "dp")[0]) == [0, 4, 8, 12]
    assert list(groups(plan, "pp")[0]) == [0, 16]
    job = JobSpec(global_batch=64, seq_len=4096)
    a = step(LLAMA8B, cluster, job, plan)
    b = step(LLAMA8B, cluster, job, plan, placement=Placement(node_order=(0, 1, 2, 3)))
    assert a.step_s == b.step_s


def test_a_measured_gemm_curve_replaces_the_calibrated_one() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    slow_gpu = replace(cluster, measured=(("compute", {"gemm": [
        {"precision": "bf16", "m": d, "n": d, "k": d, "tflops": 200.0 * d / (d + 512)} for d in (256, 1024, 4096, 16384)
    ]}),))
    job = JobSpec(global_batch=64, seq_len=4096)
    a = step(LLAMA8B, cluster, job, Plan(dp=8))
    b = step(LLAMA8B, slow_gpu, job, Plan(dp=8))
    assert b.step_s > 2 * a.step_s  # ~200 TFLOP/s measured vs ~700 calibrated


def test_model_flops_per_token_for_llama3_8b() -> None:
    # 6N with N = active parameters less the input embedding table; attention 3*L*s*n*(d_qk+d_v) causal.
    n = flops_params(LLAMA8B)
    assert n == LLAMA8B.total_params - LLAMA8B.vocab_size * LLAMA8B.hidden_size
    expected = 6 * n + 3 * 32 * 8192 * 32 * 256
    assert model_flops_per_token(LLAMA8B, 8192) == pytest.approx(expected)
