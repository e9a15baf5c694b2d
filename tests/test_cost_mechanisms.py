"""Issue 12's step-model mechanisms, each against a hand-computed case: CP exchange types, communication
knobs, MoE load imbalance and node-limited routing, the launch model, ZeRO-3/ZeRO-2/HSDP sharding
traffic, fp8 efficiency within the peak ratio, and within-sweep pair order."""

from __future__ import annotations

import math
from dataclasses import replace

from configurator import JobSpec, Plan, load_cluster, load_model, plan_violations
from configurator.cost import CostConstants, estimate_step, prepare
from configurator.cost.comm import CommModel, LinkEfficiency
from configurator.cost.constants import grad_wire_bytes, hardware_default, load_runtime_cost
from configurator.cost.cp import cp_times_s
from configurator.cost.knobs import effective_knobs
from configurator.cost.launch import DENSE_LAYER_KERNELS, exposed_launch_s, layer_launch_s
from configurator.cost.moe import busiest_rank_factor, ep_scale_out_share, max_nodes_per_token, \
    remote_domains_per_token
from configurator.cost.step import _layer_shard_comm
from configurator.cost.work import layer_work
from configurator.search.knobs import knob_variants
from configurator.validate import pair_order

C = CostConstants.defaults()
EFF = LinkEfficiency(nvlink=0.75, scale_out=0.8, alltoall=0.7)
LLAMA70B = load_model("llama3-70b")


def test_p2p_ring_is_paced_by_its_slowest_hop_not_spread_over_the_nodes_nics() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=32)
    plan = Plan(tp=8, cp=4)  # each CP rank in its own node: every hop is on InfiniBand
    job = JobSpec(global_batch=4, seq_len=131072)
    work = layer_work(LLAMA70B, job, plan, 0)
    comm = CommModel(cluster, plan, None, EFF)
    so = cluster.scale_out_link
    hop = so.latency_s + work.cp_bytes / (so.bandwidth_Bps * 0.8)
    attention = 1e-3
    f, b, _ = cp_times_s("p2p", work, 4, comm, attention, 3.0)
    assert math.isclose(f, 3 * max(0.0, hop - attention / 4), rel_tol=1e-9)
    assert math.isclose(b, 3 * max(0.0, 2 * hop - 3.0 * attention / 4), rel_tol=1e-9)
    # A hierarchical all-gather of the same bytes would be no slower per byte; the ring is never faster
    # than its hops.
    assert comm.ring_hop_s("cp", work.cp_bytes) == hop


def test_all_gather_cp_is_exposed_and_ulysses_uses_all_to_all() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    plan = Plan(cp=8)  # CP inside the node
    job = JobSpec(global_batch=4, seq_len=32768)
    work = layer_work(LLAMA70B, job, plan, 0)
    comm = CommModel(cluster, plan, None, EFF)
    f, b, hidden = cp_times_s("all_gather", work, 8, comm, 1.0, 3.0)
    assert f == b == comm.allgather_s("cp", 8 * work.cp_bytes) and hidden == 0.0
    f, b, _ = cp_times_s("a2a", work, 8, comm, 1.0, 3.0)
    nv = cluster.intra_domain_link
    # the all-to-all at its own efficiency (0.7 of the NVLink), not 0.7 of the ring collectives' 0.75
    expect = work.cp_a2a_bytes * 7 / 8 / (nv.bandwidth_Bps * 0.7) + 7 * nv.latency_s
    assert math.isclose(f, expect, rel_tol=1e-9) and f == b


def test_knobs_default_to_the_runtime_and_the_plan_overrides_them() -> None:
    mega, nemo = load_runtime_cost("megatron"), load_runtime_cost("nemo")
    plan = Plan(tp=4, sp=True, dp=2)
    assert not effective_knobs(plan, mega).tp_overlap and effective_knobs(plan, nemo).tp_overlap
    assert effective_knobs(replace(plan, tp_overlap=True), mega).tp_overlap
    assert effective_knobs(replace(plan, tp_overlap=False), nemo).tp_overlap is False
    assert effective_knobs(plan, mega).cp_comm == "p2p" and effective_knobs(plan, load_runtime_cost("fsdp")).cp_comm \
        == "all_gather"
    # tp overlap does not exist at tp=1
    assert not effective_knobs(Plan(dp=8, tp_overlap=True), mega).tp_overlap


def test_tp_overlap_knob_shortens_the_step_by_the_hidden_share() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(tp=8, sp=True)
    off = estimate_step(LLAMA70B, cluster, job, replace(plan, tp_overlap=False), constants=C)
    on = estimate_step(LLAMA70B, cluster, job, replace(plan, tp_overlap=True), constants=C)
    assert math.isclose(on.term("tp_comm"), (1 - C["overlap.tp"]) * off.term("tp_comm"), rel_tol=1e-9)
    assert on.step_s < off.step_s


def test_search_offers_only_the_knobs_the_runtime_runs() -> None:
    plan = Plan(tp=2, sp=True, cp=4, ep=2, dp=2)
    v = knob_variants(plan, "megatron", attention_heads=64, is_moe=True)
    assert len(v) == 2 * 2 * 4 * 2  # tp overlap x ep overlap x four CP types (32 heads per TP rank: cp | 32) x graphs
    v = knob_variants(plan, "megatron", attention_heads=6, is_moe=True)
    assert {p.cp_comm for p in v} == {"p2p", "all_gather", "a2a+p2p"}  # 3 heads per TP rank: no Ulysses over 4
    assert knob_variants(plan, "deepspeed", attention_heads=64, is_moe=True) == [plan]
    fixed = replace(plan, tp_overlap=True, ep_overlap=False, cp_comm="p2p", cuda_graphs=False)
    assert knob_variants(fixed, "megatron", attention_heads=64, is_moe=True) == [fixed]
    # Megatron-Core refuses per-layer graphs with full recompute, and under Megatron-FSDP beside an EP overlap
    assert {p.cuda_graphs for p in knob_variants(replace(plan, recompute="full"), "megatron", 64, True)} == {None}
    assert {p.cuda_graphs for p in knob_variants(replace(plan, sharding="zero3"), "megatron", 64, True)} == {None}
    assert {p.cuda_graphs for p in knob_variants(replace(plan, sharding="zero3", ep_overlap=False), "megatron", 64,
                                                 True)} == {False, True}


def test_busiest_expert_rank_by_the_gaussian_maximum() -> None:
    model = load_model("mixtral-8x22b")  # 8 experts
    plan = Plan(ep=8, dp=8)
    factor = busiest_rank_factor(model, plan, pairs_per_expert=1000.0, expert_cv=0.2)
    cv_rank = math.sqrt((0.04 + 0.001) / 1)
    # expected maximum of 8 standard normals: 1.4236 (normal order-statistic tables); Blom's formula 1.434
    assert math.isclose(factor, 1 + 1.4236 * cv_rank, abs_tol=0.03 * cv_rank)  # ~1.29
    assert busiest_rank_factor(model, Plan(dp=8), 1000.0, 0.2) == 1.0  # all experts on one rank


def test_node_limited_routing_caps_the_bytes_leaving_a_node_under_the_flex_dispatcher() -> None:
    dsv3 = load_model("deepseek-v3")  # 256 experts, top-8, at most 4 nodes per token
    # 8 nodes of 32 experts: P(a node holds none of 8 experts) = C(224, 8) / C(256, 8) ~ 0.339, so a token
    # reaches about 4.6 remote nodes on average; the limit of 4 nodes caps that at 4 * 7/8 = 3.5.
    assert math.isclose(ep_scale_out_share(dsv3, 8, 8, "flex"), 4 * 7 / 8 / 8)  # 0.4375 instead of 7/8
    assert ep_scale_out_share(dsv3, 8, 1, "flex") is None  # EP inside one node
    # Megatron's alltoall dispatcher (what the emitted launch uses) sends one row per token-expert pair
    assert ep_scale_out_share(dsv3, 8, 8, "alltoall") is None
    assert ep_scale_out_share(dsv3, 8, 8) is None


def test_flex_dispatcher_sends_a_token_once_per_remote_node_it_reaches() -> None:
    # 128 experts on 4 nodes (32 each), top-8: P(miss a node) = prod_{i<8} (96 - i) / (128 - i)
    miss = 1.0
    for i in range(8):
        miss *= (96 - i) / (128 - i)
    assert math.isclose(miss, 0.0927, abs_tol=5e-4)
    assert math.isclose(remote_domains_per_token(128, 8, 4), 3 * (1 - miss), rel_tol=1e-12)  # ~2.73 nodes
    qwen = load_model("qwen3-30b-a3b")  # 128 experts, top-8, no node limit
    assert math.isclose(ep_scale_out_share(qwen, 8, 4, "flex"), 3 * (1 - miss) / 8, rel_tol=1e-12)  # 0.34, not 0.75
    assert remote_domains_per_token(128, 8, 1) == 0.0
    assert math.isclose(remote_domains_per_token(8, 8, 8), 7.0)  # every expert taken: every node reached


def test_node_limit_found_by_shape_for_a_model_built_from_a_runs_row() -> None:
    from dataclasses import replace as dc_replace

    dsv3 = load_model("deepseek-v3")
    renamed = dc_replace(dsv3, name="DeepSeekV3")  # how runs.py names a Megatron-Bridge row
    assert max_nodes_per_token(renamed) == 4
    assert max_nodes_per_token(load_model("qwen3-30b-a3b")) == 0


def test_all_to_all_takes_its_own_efficiency_not_the_ring_collectives() -> None:
    model = load_model("mixtral-8x22b")
    job = JobSpec(global_batch=64, seq_len=4096)
    eff = LinkEfficiency(nvlink=0.5, scale_out=0.6, alltoall=0.8)
    one_node = load_cluster("dgx-h100", num_gpus=8)
    comm = prepare(model, one_node, job, Plan(ep=8, dp=8)).comm.with_efficiency(eff)
    nv = one_node.intra_domain_link
    # 1 GB per rank over 8 GPUs of one NVSwitch: 7/8 of it leaves the GPU at 0.8 x 450 GB/s (not 0.5 x 0.8)
    assert math.isclose(comm.alltoall_s("ep", 1e9), 1e9 * 7 / 8 / (nv.bandwidth_Bps * 0.8) + 7 * nv.latency_s)
    two_nodes = load_cluster("dgx-h100", num_gpus=16)
    comm = prepare(model, two_nodes, job, Plan(ep=16, dp=16)).comm.with_efficiency(eff)
    nic = two_nodes.scale_out_link.bandwidth_Bps  # 400 Gb/s per GPU = 50 GB/s
    # half of the bytes go to the other node, over the GPU's NIC at 0.8 of line rate (not 0.6 x 0.8)
    assert math.isclose(comm.alltoall_s("ep", 1e9), 1e9 * 0.5 / (nic * 0.8), rel_tol=0.01)


def test_launches_cost_only_what_the_gpu_does_not_cover() -> None:
    assert math.isclose(exposed_launch_s(100e-6, 24, 1e-5), 140e-6)
    assert exposed_launch_s(1e-3, 24, 1e-5) == 0.0
    f, b = layer_launch_s(1e-3, 2e-3, True, 1e-5, 2e-5, syncs=1)
    assert b == 0.0 and math.isclose(f, 2e-5 + 8 * 1e-5)  # the dispatcher's sync drains the queue
    f, _ = layer_launch_s(50e-6, 1.0, False, 1e-5, 2e-5, syncs=0)
    assert math.isclose(f, DENSE_LAYER_KERNELS * 1e-5 - 50e-6)


def test_zero3_expert_shards_are_gathered_over_expert_data_parallel() -> None:
    model = load_model("mixtral-8x22b")
    cluster = load_cluster("dgx-h100", num_gpus=256)
    job = JobSpec(global_batch=256, seq_len=4096)
    plan = Plan(ep=8, dp=256, sharding="zero3")
    assert not plan_violations(model, job, plan, 256)
    inp = prepare(model, cluster, job, plan)
    comm = inp.comm.with_efficiency(EFF)
    gather, _ = _layer_shard_comm(inp, comm, 0, plan)
    dense_b, expert_b = inp.zero3_layer_bytes[0], inp.zero3_expert_bytes[0]
    # Expert-DP: 256/8 = 32 ranks, one per node (EP fills the node): a ring over 32 NICs, 31 steps across
    # nodes (NCCL runs all-gather only as a ring: no tree's log2 latency).
    so = cluster.scale_out_link
    edp = 31 / 32 * expert_b / (so.bandwidth_Bps * 0.8) + 31 * so.latency_s
    assert math.isclose(comm.allgather_s("edp", expert_b), edp, rel_tol=1e-9)
    assert math.isclose(gather, comm.allgather_s("dp_cp", dense_b) + edp, rel_tol=1e-9)


def test_megatron_fsdp_reduces_gradients_in_bf16_and_deepspeed_zero3_in_fp32() -> None:
    """Megatron-FSDP runs with --grad-reduce-in-bf16 (its user guide's flag, which the emitter writes): its
    gradient reduce-scatter moves 2 bytes per element, where the distributed optimizer of the same runtime moves
    4 (fp32 main grads) and DeepSpeed's ZeRO-3 reduces in fp32 too."""
    model = load_model("mixtral-8x22b")
    cluster = load_cluster("dgx-h100", num_gpus=256)
    job = JobSpec(global_batch=256, seq_len=4096)
    plan = Plan(ep=8, dp=256, sharding="zero3")
    sums = {}
    for runtime in ("megatron", "deepspeed"):
        inp = prepare(model, cluster, job, plan, runtime=runtime)
        comm = inp.comm.with_efficiency(EFF)
        _, reduce = _layer_shard_comm(inp, comm, 0, plan)
        dense_b, expert_b = inp.zero3_layer_bytes[0], inp.zero3_expert_bytes[0]  # bf16 parameter bytes
        wire = {"megatron": 1.0, "deepspeed": 2.0}[runtime]  # bytes per element over bf16's 2
        avg = inp.runtime.reduce_scatter_avg
        expect = comm.reduce_scatter_s("dp_cp", dense_b * wire, avg) + \
            comm.reduce_scatter_s("edp", expert_b * wire, avg)
        assert math.isclose(reduce, expect, rel_tol=1e-12)
        sums[runtime] = reduce
    assert sums["megatron"] < sums["deepspeed"]
    assert grad_wire_bytes(load_runtime_cost("megatron"), "distopt") == 4
    assert grad_wire_bytes(load_runtime_cost("megatron"), "zero3") == 2


def test_megatron_fsdp_zero2_reduce_scatters_every_micro_batch_also_under_pipeline_parallelism() -> None:
    """Megatron-FSDP's ZeRO-2 (``optim_grads``) reduce-scatters each micro-batch's gradients in its backward whatever
    the pipeline (Megatron-Core 0.19.2 megatron_fsdp.py: ``grad_reduce_every_bprop``), as it must to hold only its
    shard of them (the memory model's ZeRO-2). Before, the step model let it reduce once per step under PP like the
    distributed optimizer while keeping ZeRO-2's memory: ZeRO-2 + PP plans led bench and the README's first command on
    traffic they do not save. A runtime that accumulates under PP and reduces once (``fsdp``, FSDP2 as torchtitan
    runs it) still times it as the distributed optimizer does."""
    from configurator.cost.constants import load_runtime_cost
    from configurator.cost.step import _per_microbatch_sharding

    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=4096)
    base = Plan(tp=2, sp=True, pp=2, dp=4, sharding="distopt")
    zero2 = replace(base, sharding="zero2")
    for runtime in ("megatron", "nemo"):
        rt = load_runtime_cost(runtime)
        assert rt.zero2_reduces_each_microbatch and _per_microbatch_sharding(zero2, rt) == "zero2"
        a = estimate_step(LLAMA70B, cluster, job, base, constants=C, runtime=runtime)
        b = estimate_step(LLAMA70B, cluster, job, zero2, constants=C, runtime=runtime)
        # The end-of-step reduction is gone (only the updated parameters' gather is left) ...
        assert b.term("dp_comm") < a.term("dp_comm")
        # ... but every micro-batch's reduce-scatter runs beside its backward: hidden, yet slowing it (NCCL's SMs).
        assert b.term("compute") > a.term("compute") and b.step_s > a.step_s
    fsdp = load_runtime_cost("fsdp")
    assert not fsdp.zero2_reduces_each_microbatch and _per_microbatch_sharding(zero2, fsdp) == ""
    assert math.isclose(estimate_step(LLAMA70B, cluster, job, zero2, constants=C, runtime="fsdp").step_s,
                        estimate_step(LLAMA70B, cluster, job, base, constants=C, runtime="fsdp").step_s, rel_tol=1e-12)
    # Without PP every runtime's ZeRO-2 reduce-scatters each micro-batch's gradients.
    flat = Plan(tp=8, sp=True, dp=2, sharding="distopt")
    assert estimate_step(LLAMA70B, cluster, job, replace(flat, sharding="zero2"), constants=C,
                         runtime="nemo").step_s > \
        estimate_step(LLAMA70B, cluster, job, flat, constants=C, runtime="nemo").step_s


def test_hsdp_shards_inside_the_node_over_nvlink() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=32)
    plan = Plan(dp=32, sharding="hsdp", shard_group=8)
    comm = CommModel(cluster, plan, None, EFF)
    nv = cluster.intra_domain_link
    nbytes = 1e9
    assert math.isclose(comm.subgroup_allgather_s("dp_cp", nbytes, 8, outer=False),
                        7 / 8 * nbytes / (nv.bandwidth_Bps * 0.75) + 7 * nv.latency_s, rel_tol=1e-9)
    so = cluster.scale_out_link  # replicas: 4 ranks, one per node
    assert math.isclose(comm.subgroup_allgather_s("dp_cp", nbytes, 8, outer=True),
                        3 / 4 * nbytes / (so.bandwidth_Bps * 0.8) + 3 * so.latency_s, rel_tol=1e-9)


def test_fp8_speedup_never_exceeds_the_peak_ratio() -> None:
    from configurator.cost.constants import PARAMETERS

    top = CostConstants.from_dict({p.name: p.upper for p in PARAMETERS})
    for family in ("hopper", "blackwell"):
        assert top.gemm_efficiency(family, "fp8") <= top.gemm_efficiency(family, "bf16")
    assert top.gemm_efficiency("blackwell", "fp4") <= top.gemm_efficiency("blackwell", "fp8")


def test_nccl_sms_slow_the_compute_they_hide_under() -> None:
    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(tp=8, sp=True, tp_overlap=True)
    on = estimate_step(LLAMA70B, cluster, job, plan, constants=C)
    off = estimate_step(LLAMA70B, cluster, job, replace(plan, tp_overlap=False), constants=C)
    hidden = off.term("tp_comm") - on.term("tp_comm")
    slow = hardware_default("nccl_overlap_compute_slowdown")
    assert math.isclose(on.term("compute") - off.term("compute"), slow * hidden, rel_tol=1e-6)


def test_pair_order_counts_only_pairs_more_than_5pct_apart() -> None:
    keys = [("a",)] * 3 + [("b",)] * 2
    measured = [100.0, 104.0, 120.0, 50.0, 60.0]
    predicted = [90.0, 200.0, 110.0, 70.0, 65.0]
    # sweep a: (120,100) right, (120,104) wrong, (104,100) within 5%; sweep b: (60,50) wrong
    assert pair_order(keys, measured, predicted) == (3, 1)


def test_pairs_of_the_same_plan_are_noise_and_left_out() -> None:
    keys = [("a",)] * 3
    measured = [100.0, 110.0, 130.0]
    predicted = [100.0, 100.0, 90.0]
    plans = ["x", "x", "y"]
    # (110, 100) share plan x: left out; (130, 100) and (130, 110) both ordered wrong
    assert pair_order(keys, measured, predicted, plans=plans) == (2, 0)


def test_every_committed_constant_at_a_bound_has_a_written_reason() -> None:
    import json

    from configurator.calibrate import at_bound
    from configurator.cost.constants import calibration_path

    values = json.loads(calibration_path().read_text())["constants"]
    missing = [b["name"] for b in at_bound(values) if b["reason"] == "no reason recorded"]
    assert not missing, missing


def test_the_knob_bound_is_below_every_knob_setting() -> None:
    from configurator.cost.step import busy_lower_bound
    from configurator.search.knobs import best_knobs, knob_lower_bound

    model = load_model("mixtral-8x7b")
    cluster = load_cluster("dgx-h100", num_gpus=32)
    job = JobSpec(global_batch=64, seq_len=8192)
    plan = Plan(tp=2, sp=True, cp=2, dp=8, ep=4)
    assert not plan_violations(model, job, plan, 32)
    inputs = prepare(model, cluster, job, plan)
    bound = knob_lower_bound(inputs, C)
    for p in knob_variants(plan, "megatron", model.num_attention_heads, True):
        assert bound <= busy_lower_bound(prepare(model, cluster, job, p), C) + 1e-12
    chosen, report = best_knobs(inputs, C)
    assert bound <= report.step_s and chosen.plan.tp_overlap is not None and chosen.plan.cp_comm is not None


def test_deepspeed_accumulates_each_microbatchs_gradients_in_fp32_outside_the_gemms() -> None:
    from configurator.cost.compute import gpu_rates
    from configurator.cost.step import evaluate

    cluster = load_cluster("dgx-a100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=2048)
    plan = Plan(tp=8, pp=2, dp=1)
    inp = prepare(LLAMA70B, cluster, job, plan, runtime="deepspeed")
    with_hook = evaluate(inp, C)
    fused = evaluate(replace(inp, runtime=replace(inp.runtime, grad_accum_bytes_per_param=0), _rates={},
                             _schedules={}), C)
    hbm = gpu_rates(cluster, "bf16", C).hbm_Bps
    r = with_hook.critical_stage
    expect = 64 * sum(inp.rank_params[r]) * 10 / hbm  # 64 micro-batches, 10 B per parameter each
    assert math.isclose(with_hook.term("compute") - fused.term("compute"), expect, rel_tol=1e-6)


def test_deepspeed_pipeline_sends_one_tp_partition_of_the_activation_per_rank() -> None:
    # DeepSpeed's pipeline engine partitions the activation (and its gradient) over the TP ranks before
    # the send (is_pipe_partitioned = is_model_parallel): Llama-3-70B, mb 2 x 2048 tokens x 8192 x 2 B
    # = 67,108,864 B per activation, 8,388,608 B per TP8 rank; a TP1 rank sends all of it.
    cluster = load_cluster("dgx-a100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=2048)
    tp8 = prepare(LLAMA70B, cluster, job, Plan(tp=8, pp=2, micro_batch=2), runtime="deepspeed")
    assert tp8.p2p_bytes == 8_388_608
    tp1 = prepare(LLAMA70B, load_cluster("dgx-a100", num_gpus=2), job, Plan(tp=1, pp=2, micro_batch=2),
                  runtime="deepspeed")
    assert tp1.p2p_bytes == 67_108_864


def test_deepspeed_zero1_all_reduces_the_full_gradients() -> None:
    from configurator.cost.step import evaluate

    cluster = load_cluster("dgx-a100", num_gpus=32)
    job = JobSpec(global_batch=64, seq_len=2048)
    plan = Plan(tp=8, pp=2, dp=2, sharding="zero1")
    inp = prepare(LLAMA70B, cluster, job, plan, runtime="deepspeed")
    comm = inp.comm.with_efficiency(LinkEfficiency(nvlink=C["link.nvlink"], scale_out=C["link.scale_out"],
                                                   alltoall=C["link.alltoall"]))
    ar = evaluate(inp, C)
    rs = evaluate(replace(inp, runtime=replace(inp.runtime, zero1_grad_allreduce=False), _rates={}, _schedules={}), C)
    dense = max(p[0] for p in inp.rank_params)
    grad = dense * 4  # fp32 gradients, not overlapped under DeepSpeed
    extra = comm.allreduce_s("dp_cp", grad) - comm.reduce_scatter_s("dp_cp", grad)
    assert math.isclose(ar.term("dp_comm") - rs.term("dp_comm"), extra, rel_tol=1e-6)


def test_gap_line_names_the_terms_that_separate_two_plans() -> None:
    import pytest

    from configurator.cost.gap import gap_line, parse_versus
    from configurator.errors import InputError

    cluster = load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=64, seq_len=4096)
    fast = estimate_step(LLAMA70B, cluster, job, Plan(tp=8, sp=True, tp_overlap=True), constants=C)
    slow = estimate_step(LLAMA70B, cluster, job, Plan(tp=8, sp=True, tp_overlap=False, recompute="full"),
                         constants=C)
    line = gap_line(fast, slow)
    assert line is not None and "compute" in line.split("loses")[1]  # recompute is the largest term
    assert gap_line(slow, fast) is None  # slower: nothing to explain
    assert parse_versus("tp=1, pp=16,ep=64,mb=2") == {"tp": 1, "pp": 16, "ep": 64, "micro_batch": 2}
    with pytest.raises(InputError):
        parse_versus("tq=4")


def test_turning_an_overlap_on_never_lengthens_the_modelled_step() -> None:
    from configurator.cost.step import evaluate

    model = load_model("mixtral-8x7b")
    cluster = load_cluster("dgx-h100", num_gpus=32)
    job = JobSpec(global_batch=64, seq_len=8192)
    for plan in (Plan(tp=2, sp=True, dp=16, ep=8), Plan(tp=4, sp=True, pp=2, dp=4, ep=4)):
        inp = prepare(model, cluster, job, plan)
        for tp in (False, True):
            off = evaluate(replace(inp, plan=replace(plan, tp_overlap=tp, ep_overlap=False), _rates={}, _schedules={}), C)
            on = evaluate(replace(inp, plan=replace(plan, tp_overlap=tp, ep_overlap=True), _rates={}, _schedules={}), C)
            assert on.step_s <= off.step_s


def test_a_top_plan_far_above_the_best_measured_mfu_is_flagged_and_fails_the_gate() -> None:
    from configurator.bench import compare
    from configurator.plausibility import check_mfu

    table = {"hopper/bf16": {"mfu": 0.50, "run_id": "r1", "source": "s"}}
    ok = check_mfu("hopper", "bf16", 0.54, table)
    bad = check_mfu("hopper", "bf16", 0.56, table)  # 6 points above
    assert not ok["flagged"] and bad["flagged"] and bad["excess_points"] == 6.0
    assert check_mfu("hopper", "fp16", 0.56, table)["flagged"]  # fp16 is judged with bf16
    assert not check_mfu("ampere", "bf16", 0.9, table)["flagged"]  # nothing measured: no verdict
    result = {"name": "x", "best": None, "search": {"evaluated": 1}, "plausibility": bad}
    failures = compare([result], {"scenarios": [{"name": "x", "best": None, "evaluated": 1}]}, [])
    assert len(failures) == 1 and "implausible" in failures[0]


def test_the_first_layers_gather_of_each_microbatch_is_exposed() -> None:
    from configurator.cost.step import _rates_for, _stage_times

    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=64, seq_len=8192)
    plan = Plan(dp=16, sharding="zero3", micro_batch=4)
    inp = prepare(model, cluster, job, plan)
    comm = inp.comm.with_efficiency(EFF)
    gather, _ = _layer_shard_comm(inp, comm, 0, plan)
    fwd, _, _ = _stage_times(inp, _rates_for(inp, C), comm, C, 0)
    # mb4 x 8K tokens: every later gather hides under its layer's compute, the first one cannot
    assert math.isclose(fwd["dp_comm"], gather, rel_tol=1e-9)


def test_gap_line_names_host_launches_when_they_separate_the_compute() -> None:
    """Where most of the compute term's difference is host time (``compute_detail_s["launch"]``), the line says
    so instead of guessing from the plans (here both run EP8: ``term_mechanism`` would name nothing, or the
    experts' imbalance for a wider EP)."""
    from configurator.cost.gap import gap_line, launch_mechanism

    qwen = load_model("qwen3-30b-a3b")
    cluster = load_cluster("gb200-nvl72", num_gpus=8)  # a Grace host: its launches cost 2.75x
    job = JobSpec(global_batch=64, seq_len=4096)
    big, small = Plan(dp=8, ep=8, micro_batch=8), Plan(dp=8, ep=8, micro_batch=1)
    fast = estimate_step(qwen, cluster, job, big, constants=C)
    slow = estimate_step(qwen, cluster, job, small, constants=C)
    launch_gap = dict(slow.compute_detail_s)["launch"] - dict(fast.compute_detail_s)["launch"]
    line = gap_line(fast, slow, best_plan=big, other_plan=small)  # (default constants: 2.7 s against 1.3 s)
    assert line is not None and "it loses compute" in line
    text = line.split("compute: ", 1)[1]
    assert text.startswith("its host cannot keep up") and f"{launch_gap:.2f} s" in text and "mb=1 against mb=8" in text
    # Where recompute separates them (GPU work), no host line.
    cluster_h100 = load_cluster("dgx-h100", num_gpus=8)
    a = estimate_step(LLAMA70B, cluster_h100, job, Plan(tp=8, sp=True, tp_overlap=True), constants=C)
    b = estimate_step(LLAMA70B, cluster_h100, job, Plan(tp=8, sp=True, tp_overlap=True, recompute="full"), constants=C)
    assert launch_mechanism(a, b, Plan(tp=8), Plan(tp=8, recompute="full")) == ""
