"""The flex MoE dispatcher's DeepEP / HybridEP communication buffers in the memory model (ep_buffers.py).

Hand-computed from DeepEP v1.2.1 ``csrc/config.hpp`` (``get_nvl_buffer_size_hint`` /
``get_rdma_buffer_size_hint``) with ``deep_ep/buffer.py``'s recommended configs and Megatron-Core's 20 SMs
(10 channels), and from the hybrid-ep branch's ``intranode.cu`` / ``internode_doca.cu`` allocations.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.ep_buffers import (NUM_WORKSPACE_BYTES, NVSHMEM_GRANULE_BYTES, deepep_nvl_buffer_bytes,
                                     deepep_rdma_buffer_bytes, flex_buffers, hybridep_nvl_buffer_bytes,
                                     hybridep_rdma_buffer_bytes)
from configurator.margin import fits_with_margin, parse_margin
from configurator.memory import estimate_memory, with_flex_buffers, with_offload
from configurator.search.resolve import _resolve_margins, resolve
from configurator.search.space import SearchContext

MIB = 2 ** 20


def test_deepep_buffers_of_hidden_7168_bf16_over_eight_nodes_match_the_size_hints_by_hand() -> None:
    # EP64: 8 NVLink ranks x 8 RDMA ranks, 10 channels. hidden_bytes = 7168 x 2 = 14,336.
    # NVLink: both configs receive 288 tokens per chunk; per token 14,336 + 8 (SourceMeta) + 128 x 8 (top-k
    # indices) + 128 x 4 (weights) + 128 x 4 (scales) = 16,392 B.
    nvl = 10 * 8 * (2 * 8 + 3) * 4 + 10 * 8 * 288 * 16_392  # 6,080 + 377,671,680 = 377,677,760
    assert nvl == 377_677_760
    assert deepep_nvl_buffer_bytes(14_336, 64) == 377_677_824  # rounded up to 128 B
    # RDMA: receive chunk 128 rounded up to the send chunk (dispatch 28 -> 140, combine 20 -> 140); per token
    # 16,392 + 16 (int4) = 16,408 B, twice (send and receive halves).
    rdma = 10 * 8 * (8 * 2 + 2) * 2 * 4 + 10 * 8 * 140 * 16_408 * 2  # 11,520 + 367,539,200
    assert deepep_rdma_buffer_bytes(14_336, 64) == rdma == 367_550_720  # already a multiple of 128
    # On the device: the NVLink buffer with its 160 B of barrier/pointer slots and the 32 MiB workspace; the
    # RDMA buffer in whole 512 MiB NVSHMEM granules (350.5 MiB -> 512 MiB).
    b = flex_buffers("deepep", 7168, 64, 4096, 4, 8)
    assert b.nvl_bytes == 377_677_824 + 160 + 32 * MIB
    assert b.rdma_bytes == 512 * MIB == NVSHMEM_GRANULE_BYTES
    assert b.total_bytes == pytest.approx(904.18 * MIB, abs=0.01 * MIB)


def test_deepep_inside_one_node_has_no_rdma_buffer() -> None:
    # hidden 6144 (Mixtral-8x22B), EP8: 1 RDMA rank, 256-token chunks; per token 12,288 + 2,056 = 14,344 B.
    nvl = 10 * 8 * (2 * 1 + 3) * 4 + 10 * 8 * 256 * 14_344  # 1,600 + 293,765,120 = 293,766,720
    assert deepep_nvl_buffer_bytes(12_288, 8) == nvl + 64 == 293_766_784  # to 128 B
    assert deepep_rdma_buffer_bytes(12_288, 8) == 0
    b = flex_buffers("deepep", 6144, 8, 4096, 1, 8)
    assert b.rdma_bytes == 0 and b.nvl_bytes == 293_766_784 + 160 + NUM_WORKSPACE_BYTES


def test_hybridep_buffers_scale_with_the_group_tokens_and_add_rdma_only_across_domains() -> None:
    # DeepSeek-V3-like: hidden 7168, 4096 tokens per rank, 4 local experts, EP64 in one 64-GPU NVLink segment:
    # 262,144 rows of 2 x 7168 + 4 x 4 x 64 + 4 x 56 = 15,584 B.
    assert hybridep_nvl_buffer_bytes(7168, 4096, 4, 64, 1) == 4096 * 64 * 15_584 == 4_085_252_096
    assert hybridep_rdma_buffer_bytes(7168, 4096, 4, 64, 1) == 0
    # Two domains of 64: dispatch 4096 (14,336 + 4 x 4 x 64 x 2 + 224) + 4096 (14,336 + 1,024 + 224);
    # combine 2 x 4096 (14,336 + 1,024).
    rdma = 4096 * (14_336 + 2048 + 224) + 4096 * (14_336 + 1024 + 224) + 2 * 4096 * (14_336 + 1024)
    assert hybridep_rdma_buffer_bytes(7168, 4096, 4, 64, 2) == rdma
    b = flex_buffers("hybridep", 7168, 128, 4096, 2, 64)
    assert b.rdma_bytes > 0 and b.nvl_bytes == hybridep_nvl_buffer_bytes(7168, 4096, 2, 64, 2)
    assert flex_buffers("hybridep", 7168, 64, 4090, 4, 64).nvl_bytes == 4_085_252_096  # tokens to 16: 4090 -> 4096


def test_the_buffer_line_appears_only_for_the_flex_dispatcher_outside_the_allocator() -> None:
    model = load_model("deepseek-v3")
    cluster = load_cluster("dgx-h100", num_gpus=512)
    job = JobSpec(global_batch=1024, seq_len=4096)
    base = Plan(dp=64, pp=8, ep=64, sharding="distopt", recompute="full")
    by = {d: estimate_memory(model, cluster, job, replace(base, ep_dispatcher=d)) for d in (None, "alltoall", "flex")}
    buffers = flex_buffers("deepep", 7168, 64, 4096, 4, 8).total_bytes
    for d in (None, "alltoall"):
        assert all(s.ep_buffer_bytes == 0 for s in by[d].stages)
        assert by[d].as_dict()["breakdown_gib"]["ep_buffers"] == 0 and by[d].flex_buffers is None
    flex = by["flex"]
    assert flex.flex_buffers is not None and flex.flex_buffers.total_bytes == buffers
    for s_a, s_f in zip(by["alltoall"].stages, flex.stages):
        # Every stage holds MoE layers here (DeepSeek-V3's 3 dense layers are only part of stage 0).
        assert s_f.ep_buffer_bytes == buffers
        assert s_f.reserved_bytes == s_a.reserved_bytes and s_f.allocated_bytes == s_a.allocated_bytes
        assert s_f.total_bytes == s_a.total_bytes + buffers
    d = flex.as_dict()
    assert d["breakdown_gib"]["ep_buffers"] == round(buffers / 2 ** 30, 3)
    assert sum(d["breakdown_gib"].values()) == pytest.approx(d["peak_gib"], abs=0.01)


def test_a_stage_without_moe_layers_holds_no_buffer() -> None:
    # DeepSeek-V3's first three layers are dense: a first stage of exactly those never dispatches.
    model = load_model("deepseek-v3")
    cluster = load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=64, seq_len=4096)
    plan = Plan(pp=2, ep=32, dp=32, ep_dispatcher="flex", pipeline_layers=(3, 58), recompute="full")
    mem = estimate_memory(model, cluster, job, plan)
    assert mem.stages[0].ep_buffer_bytes == 0
    assert mem.stages[1].ep_buffer_bytes == flex_buffers("deepep", 7168, 32, 4096, 8, 8).total_bytes > 0


def test_with_flex_buffers_and_offload_equal_a_fresh_estimate() -> None:
    model = load_model("mixtral-8x22b")
    cluster = load_cluster("dgx-h100", num_gpus=64)
    job = JobSpec(global_batch=256, seq_len=4096)
    plan = Plan(dp=16, pp=4, ep=8, sharding="distopt", recompute="selective")
    base = estimate_memory(model, cluster, job, plan)
    flex = replace(plan, ep_dispatcher="flex")
    assert with_flex_buffers(base, model, cluster, job, flex) == estimate_memory(model, cluster, job, flex)
    off = replace(flex, offload=0.5)
    assert with_offload(estimate_memory(model, cluster, job, flex), off, cluster) == \
        estimate_memory(model, cluster, job, off)


def test_a_flex_plan_that_fit_at_the_margin_now_needs_room_for_its_buffers() -> None:
    # Qwen3-30B-A3B on 16 H100 (fp8), EP16 over two nodes: the buffers take 0.66 GiB (DeepEP, hidden 2048).
    # Resolved without them, its no-recompute options offload just enough optimizer states to keep the
    # margin free; the flex dispatcher would eat into it. The search keeps those options for alltoall and
    # resolves flex again with the buffers counted: more offload. (Under the distributed optimizer: Megatron-LM
    # offloads nothing under Megatron-FSDP, ``space.offload_runs``.)
    model = load_model("qwen3-30b-a3b")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=1024, seq_len=4096, precision="fp8")
    margin = parse_margin(None)
    ctx = SearchContext(model=model, cluster=cluster, job=job, memory_margin=margin)
    structure = Plan(dp=8, cp=2, ep=16, micro_batch=4, sharding="distopt")
    buffers = flex_buffers("deepep", 2048, 16, 2048 * 4, 8, 8).total_bytes
    cap = cluster.gpu_memory_bytes
    old = [o for o in _resolve_margins(ctx, structure, False).options if o.plan.sharding == "distopt"]
    offloaded = next(o for o in old if o.plan.offload > 0)
    assert fits_with_margin(offloaded.memory.peak_bytes, cap, margin)
    as_flex = with_flex_buffers(offloaded.memory, model, cluster, job, replace(offloaded.plan, ep_dispatcher="flex"))
    assert as_flex.peak_bytes == offloaded.memory.peak_bytes + buffers
    assert not fits_with_margin(as_flex.peak_bytes, cap, margin)  # it fit at the margin; with flex it does not

    new = [o for o in resolve(ctx, structure).options if o.plan.sharding == "distopt"]
    kept = next(o for o in new if o.plan == replace(offloaded.plan, ep_dispatcher="alltoall"))
    assert kept.memory == offloaded.memory
    flex = next(o for o in new if o.plan.ep_dispatcher == "flex" and o.plan.recompute == "none")
    assert flex.plan.offload > offloaded.plan.offload
    assert flex.memory == estimate_memory(model, cluster, job, flex.plan)
    assert flex.memory.peak.ep_buffer_bytes == buffers
    assert fits_with_margin(flex.memory.peak_bytes, cap, margin)
    # Every option left open to either dispatcher has room for the buffers too.
    for o in new:
        if o.plan.ep_dispatcher is None:
            with_buffers = with_flex_buffers(o.memory, model, cluster, job, replace(o.plan, ep_dispatcher="flex"))
            assert fits_with_margin(with_buffers.peak_bytes, cap, margin)


def test_the_searchs_flex_plans_carry_their_buffers_and_keep_the_margin() -> None:
    # The search resolves memory per structure and picks the dispatcher when it costs a plan: the memory it
    # reports (and checked against the margin) must be that of the plan it returns, buffers included.
    from configurator.search.optimize import search

    # (Qwen3-30B-A3B on 16 H100: among its top plans some resolved at the margin with flex fixed, others left
    # open to either dispatcher, where the knob search chose flex.)
    model = load_model("qwen3-30b-a3b")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    job = JobSpec(global_batch=256, seq_len=4096)
    margin = parse_margin(None)
    ranked = search(SearchContext(model=model, cluster=cluster, job=job, memory_margin=margin), top_k=5,
                    workers=1).ranked
    assert any(e.plan.ep_dispatcher == "flex" for e in ranked)
    for e in ranked:
        assert e.memory == estimate_memory(model, cluster, job, e.plan), e.plan.describe()
        if e.plan.ep_dispatcher == "flex":
            assert e.memory.peak.ep_buffer_bytes == flex_buffers("deepep", 2048, e.plan.ep, 0, 8, 8).total_bytes
        assert e.tight or fits_with_margin(e.memory.peak_bytes, cluster.gpu_memory_bytes, margin)


def test_the_step_picture_draws_the_buffers_only_for_a_flex_plan() -> None:
    import xml.etree.ElementTree as ET

    from configurator.cost.constants import CostConstants
    from configurator.explain import svg, timeline

    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100", num_gpus=8)
    job = JobSpec(global_batch=16, seq_len=4096)
    constants = CostConstants.defaults()
    for dispatcher, drawn in ((None, 0), ("flex", 2)):  # two stages, one bar part each
        plan = Plan(pp=2, ep=4, dp=4, ep_dispatcher=dispatcher, recompute="full")
        root = ET.fromstring(svg(timeline(model, cluster, job, plan, constants),
                                 estimate_memory(model, cluster, job, plan), title="t"))
        parts = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "mem ep_buffers"]
        assert len(parts) == drawn
