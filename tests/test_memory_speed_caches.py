"""The caches that make a search's memory estimates cheaper give the uncached floats, and their keys tell apart
what changes the answer: the chunk sums shared by runs of layer kinds, the stage layouts shared by a structure's
recompute forms, the tables kept a generation past the memo's limit, the flex buffers remembered per search
(and per cluster), the first layer of each kind, the module lists per model and precision, and
``plan_violations`` working out the pipeline split only where a rule reads it."""

from __future__ import annotations

import contextvars

import pytest

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


def _alone(model, plan: Plan, rt, m: int) -> tuple:  # type: ignore[no-untyped-def]
    """The table as ``_stage_activations`` works it out stage by stage, without a memo (the reference)."""
    return tuple(_stage_activations(model, JOB, plan, rt, s, m) for s in range(plan.pp))


_SPLIT = (8, 8, 8, 8, 8, 8, 8, 5)
"""DeepSeek-V3's 61 layers over PP4 x VPP2, one chunk shorter (chunks of unequal weight: ``weighted_peak``)."""


def _forms(plan: Plan) -> list[Plan]:
    """``plan`` under each kind of recompute form the search tries."""
    return [Plan(**{**_fields(plan), **form}) for form in (
        {}, {"recompute": "selective"}, {"recompute": "selective", "recompute_modules": ("layernorm", "moe_act")},
        {"recompute": "full"}, {"recompute": "full", "recompute_num_layers": 2})]


def test_the_table_equals_each_stage_worked_out_alone() -> None:
    """Every branch of ``_stage_activation_table`` (1F1B, interleaved chunks with one run of kinds, several runs of
    equal and of unequal weight, one stage, the MTP block on the last stage) under each recompute form, with and
    without pipeline buffers (Megatron keeps none, DeepSpeed two): the floats of ``_stage_activations``."""
    plans = [Plan(tp=2, pp=4, vpp=1, dp=8, ep=8, sp=True), Plan(tp=2, pp=4, vpp=2, dp=8, ep=8, sp=True),
             Plan(tp=2, pp=4, vpp=2, dp=8, ep=8, sp=True, pipeline_layers=_SPLIT), Plan(tp=8, pp=1, dp=8, ep=8)]
    mixtral = load_model("mixtral-8x22b")  # 56 layers, all MoE: one run of kinds per chunk
    for runtime in ("megatron", "deepspeed"):
        rt = load_runtime(runtime)
        for plan in (f for p in plans for f in _forms(p)):
            m = plan.num_microbatches(JOB)
            assert _stage_activation_table(DEEPSEEK, JOB, plan, rt, m) == _alone(DEEPSEEK, plan, rt, m)
        for plan in _forms(Plan(tp=2, pp=4, vpp=7, dp=8, ep=8, sp=True)) \
                + _forms(Plan(tp=2, pp=2, vpp=3, dp=16, ep=8, pipeline_layers=(9, 9, 10, 10, 9, 9))):
            m = plan.num_microbatches(JOB)
            assert _stage_activation_table(mixtral, JOB, plan, rt, m) == _alone(mixtral, plan, rt, m)


def test_the_stage_layout_is_keyed_on_every_field_it_reads() -> None:
    """One search memo, plans that differ from the first in one field the layout reads (TP and SP: the head's and
    the pipeline buffers' widths; CP and the micro-batch: the tokens; PP, VPP and the split: the chunks; the
    micro-batches: the counts in flight; the runtime: the buffers), each asked after the first: each gets the
    floats of its own table, not the first's layout."""
    base = Plan(tp=2, pp=4, vpp=2, dp=8, ep=8, sp=True, recompute="full", recompute_num_layers=2,
                pipeline_layers=_SPLIT)
    fields = _fields(base)
    variants = [base, Plan(**{**fields, "tp": 4, "dp": 4}), Plan(**{**fields, "sp": False}),
                Plan(**{**fields, "cp": 2, "dp": 4}), Plan(**{**fields, "micro_batch": 2}),
                Plan(**{**fields, "pp": 8, "dp": 4, "pipeline_layers": (4,) * 15 + (1,)}),
                Plan(**{**fields, "vpp": 1, "pipeline_layers": (16, 16, 16, 13)}),
                Plan(**{**fields, "pipeline_layers": (5, 8, 8, 8, 8, 8, 8, 8)})]
    memo: dict = {}
    asked = []
    for runtime in ("deepspeed", "megatron"):
        rt = load_runtime(runtime)
        for plan in variants:
            for m in (plan.num_microbatches(JOB), 1):
                asked.append(_stage_activation_table(DEEPSEEK, JOB, plan, rt, m, memo))
                assert asked[-1] == _alone(DEEPSEEK, plan, rt, m), (runtime, plan, m)
    assert len(set(asked)) == len(asked)  # (every variant changes the table: a key missing a field would show)


def test_a_table_asked_again_after_the_limit_comes_from_the_last_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ACTIVATION_MEMO`` at its limit keeps the tables of its last generation: a table asked again there is not
    worked out again (the first generation, asked again two generations later, is), the memo holds at most twice
    the limit, and every estimate is the fresh one's."""
    import configurator.memory as memory
    monkeypatch.setattr(memory, "ACTIVATION_MEMO_LIMIT", 6)
    made = []
    table = memory._stage_activation_table

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(args[2])
        return table(*args, **kwargs)
    monkeypatch.setattr(memory, "_stage_activation_table", counted)
    cluster = load_cluster("h800-ib", num_gpus=64)
    plans = [Plan(tp=2, pp=4, dp=8, ep=8, sp=True, recompute="full", recompute_num_layers=k) for k in range(1, 13)]

    def ask(order: list[int]) -> list:  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            ACTIVATION_MEMO.set({})
            out = []
            for i in order:
                out.append(memory_parts(DEEPSEEK, cluster, JOB, plans[i]).activations)
                assert len(ACTIVATION_MEMO.get()) <= 2 * memory.ACTIVATION_MEMO_LIMIT + 2
            return out
        return contextvars.copy_context().run(run)
    first, second = list(range(8)), list(range(4, 8))  # 8 tables (one new generation), then 4 of the last 4
    got = ask(first + second)
    assert len(made) == 8
    assert got == [memory_parts(DEEPSEEK, cluster, JOB, plans[i]).activations for i in first + second]
    made.clear()
    ask(list(range(12)) + [0])  # the first table is two generations old by then: worked out again
    assert len(made) == 13
