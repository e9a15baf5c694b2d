"""The caches that make a search's memory estimates cheaper give the uncached floats, and their keys tell apart
what changes the answer: the chunk sums shared by runs of layer kinds, the flex buffers remembered per search
(and per cluster), the first layer of each kind, the module lists per model and precision, and
``plan_violations`` working out the pipeline split only where a rule reads it."""

from __future__ import annotations

import contextvars

from configurator import JobSpec, load_cluster, load_model
from configurator.memory import (ACTIVATION_MEMO, _chunk_activations, _first_of_each_kind, _per_kind,
                                 _stage_activation_table, _stage_activations, _stage_flex_buffers, estimate_memory,
                                 layer_moe_flags, load_runtime, memory_parts)
from configurator.recompute import selective_module_ladder
from configurator.search.resolve import _module_lists
from configurator.specs.plan import Plan, plan_violations

JOB = JobSpec(global_batch=512, seq_len=4096)
DEEPSEEK = load_model("deepseek-v3")  # 61 layers, the first 3 dense: chunks with different runs of layer kinds


def _in_search(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` with the search's activation memo set (in a context of its own)."""
    def run():  # type: ignore[no-untyped-def]
        ACTIVATION_MEMO.set({})
        return fn(*args)
    return contextvars.copy_context().run(run)


def test_chunks_with_the_same_run_of_layer_kinds_share_their_sum_and_no_other() -> None:
    """PP4 VPP2 with an uneven split of DeepSeek-V3's 61 layers (8 chunks; chunk 0 holds the 3 dense layers and
    5 MoE layers, the others only MoE layers, one of them shorter), full recompute of 2 layers per chunk: the
    table built with the chunk memo equals each stage worked out alone, and the memo holds one entry per
    distinct run (3: the dense-led chunk, 8 MoE layers, 5 MoE layers)."""
    split = (8, 8, 8, 8, 8, 8, 8, 5)
    plan = Plan(tp=2, pp=4, vpp=2, dp=8, ep=8, sp=True, recompute="full", recompute_num_layers=2,
                pipeline_layers=split)
    rt = load_runtime("megatron")
    m = plan.num_microbatches(JOB)
    kinds = _per_kind(DEEPSEEK, JOB, plan, rt)
    alone = tuple(_stage_activations(DEEPSEEK, JOB, plan, rt, s, m) for s in range(plan.pp))
    assert _stage_activation_table(DEEPSEEK, JOB, plan, rt, m) == alone
    memo: dict = {}
    for s in range(plan.pp):
        _stage_activations(DEEPSEEK, JOB, plan, rt, s, m, kinds, layer_moe_flags(DEEPSEEK), memo)
    assert len(memo) == 3
    flags = layer_moe_flags(DEEPSEEK)
    for run, value in memo.items():  # each entry is the sum of a chunk with that run, worked out alone
        start = next(i for i in range(DEEPSEEK.num_layers - len(run) + 1) if flags[i:i + len(run)] == run)
        assert value == _chunk_activations(DEEPSEEK, JOB, plan, kinds, list(range(start, start + len(run))))


def test_per_kind_asks_the_first_layer_of_each_kind() -> None:
    """DeepSeek-V3: layer 0 is dense and layer 3 the first MoE layer; a dense model has one kind."""
    assert _first_of_each_kind(DEEPSEEK) == ((0, False), (3, True))
    assert _first_of_each_kind(load_model("llama3-70b")) == ((0, False),)


def test_the_estimate_in_a_search_equals_the_estimate_outside_it() -> None:
    """Hand-picked plans (flex and alltoall, two EP degrees, offload, selective modules) estimated one after
    another in one search's memo give the floats of a fresh ``estimate_memory`` each: the remembered flex
    buffers and device constants are keyed on what they depend on."""
    cluster = load_cluster("h800-ib", num_gpus=64)
    base = Plan(tp=2, pp=4, vpp=1, dp=8, ep=8, sp=True, sharding="distopt")
    plans = [base, Plan(**{**_fields(base), "ep_dispatcher": "flex"}),
             Plan(**{**_fields(base), "ep_dispatcher": "flex", "ep": 16}),
             Plan(**{**_fields(base), "ep_dispatcher": "flex", "micro_batch": 2}),
             Plan(**{**_fields(base), "recompute": "selective", "recompute_modules": ("layernorm", "moe_act"),
                     "offload": 0.4})]
    fresh = [estimate_memory(DEEPSEEK, cluster, JOB, p) for p in plans]

    def in_order():  # type: ignore[no-untyped-def]
        return [memory_parts(DEEPSEEK, cluster, JOB, p).report(p.offload) for p in plans]

    assert _in_search(in_order) == fresh
    assert fresh[1].peak_bytes > fresh[0].peak_bytes  # the buffers count
    assert fresh[2].flex_buffers != fresh[1].flex_buffers  # (EP 16 spans two nodes: an RDMA buffer too)


def test_the_remembered_flex_buffers_belong_to_their_cluster() -> None:
    """One memo, two clusters (DeepEP on H800 nodes, HybridEP across GB200 NVL72): each gets its own buffers."""
    h800, gb200 = load_cluster("h800-ib", num_gpus=64), load_cluster("gb200-nvl72", num_gpus=64)
    plan = Plan(tp=1, pp=4, dp=16, ep=16, ep_dispatcher="flex")

    def both():  # type: ignore[no-untyped-def]
        first = memory_parts(DEEPSEEK, h800, JOB, plan)
        second = memory_parts(DEEPSEEK, gb200, JOB, plan)
        return first.buffers, second.buffers, _stage_flex_buffers(DEEPSEEK, h800, JOB, plan)

    on_h800, on_gb200, again = _in_search(both)
    assert on_h800 == estimate_memory(DEEPSEEK, h800, JOB, plan).flex_buffers
    assert on_gb200 == estimate_memory(DEEPSEEK, gb200, JOB, plan).flex_buffers
    assert on_h800 != on_gb200 and again[0] == on_h800


def test_the_module_lists_are_the_ladder_past_megatrons_default_per_precision() -> None:
    for precision in ("bf16", "fp8"):
        assert _module_lists(DEEPSEEK, precision) == tuple(selective_module_ladder(DEEPSEEK, precision)[1:])
    assert _module_lists(DEEPSEEK, "bf16") != _module_lists(DEEPSEEK, "fp8")  # fp8 cannot recompute moe_act


def test_plan_violations_still_names_a_wrong_split_and_too_deep_a_recompute() -> None:
    """An uneven split summing to 60 of 61 layers; full recompute of 9 layers where the largest chunk has 8."""
    short = Plan(tp=1, pp=2, dp=32, ep=8, pipeline_layers=(30, 30))
    assert "pipeline_layers [30, 30] sum to 60, not num_layers=61" in plan_violations(DEEPSEEK, JOB, short)
    deep = Plan(tp=1, pp=8, dp=8, ep=8, recompute="full", recompute_num_layers=9,
                pipeline_layers=(7, 8, 8, 8, 8, 8, 8, 6))
    assert plan_violations(DEEPSEEK, JOB, deep) == ["recompute_num_layers=9 exceeds the 8 layers of a pipeline chunk"]
    assert plan_violations(DEEPSEEK, JOB, Plan(tp=1, pp=8, dp=8, ep=8, recompute="full", recompute_num_layers=8,
                                               pipeline_layers=(7, 8, 8, 8, 8, 8, 8, 6))) == []


def _fields(plan: Plan) -> dict:
    return {name: getattr(plan, name) for name in Plan.__dataclass_fields__}


def test_the_fast_stage_builder_makes_the_dataclass_s_object() -> None:
    """``_stage_memory`` builds ``StageMemory`` through its slots: equal (and hashing equal) to the constructor's."""
    from configurator.memory import StageMemory, _stage_memory
    rt = load_runtime("megatron")
    built = _stage_memory(1, 8, 1000, 2.0, 4.0, 12.0, 6.0, 3.0, 1.5, 0.25, rt, 0.5)
    host = 12.0 * 0.25
    made = StageMemory(stage=1, num_layers=8, params=1000, weights_bytes=2.0, grads_bytes=4.0,
                       optimizer_bytes=12.0 - host, activations_bytes=6.0,
                       fragmentation_bytes=(2.0 + 4.0 + (12.0 - host) + 6.0) * rt.fragmentation, context_bytes=1.5,
                       host_optimizer_bytes=host, inflight_microbatches=3.0, ep_buffer_bytes=0.5)
    assert type(built) is StageMemory and built == made and hash(built) == hash(made)
