"""A structure's bound takes its own paired EP-overlap share, and stays a lower bound of its step.

Megatron's combined 1F1B hides the EP all-to-all only on passes paired with another micro-batch
(``moe.ep_overlap_paired_share``, set by pp, vpp and the micro-batch count). ``StructureBounds`` times one layer
per layer key, which leaves the pipeline out, at the shares 0 and 1, and interpolates each structure's own share
(a layer's time is affine in it: ``bound._at_share``); a family of structures takes its members' largest share
(the time falls as the share grows). Dense layers, the embedding and the head move no EP traffic, so they are
timed once for every EP knob setting."""

from __future__ import annotations

from dataclasses import replace as dc_replace

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.cost.moe import ep_overlap_paired_share
from configurator.cost.step import (VirtualStage, _rates_for, _stage_times, busy_lower_bound, evaluate,
                                    link_efficiency, prepare)
from configurator.search.bound import StructureBounds
from configurator.search.knobs import optimistic_inputs
from configurator.search.space import SearchContext, enumerate_plans
from configurator.specs.plan import Plan, replace_unchecked

CONSTANTS = load_calibration()


def _ctx(model: str, gpus: int, batch: int) -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster("dgx-h100", num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=4096))


def test_a_plans_share_is_the_mean_share_of_its_ranks_paired_passes() -> None:
    """PP2, 8 micro-batches, no VPP: rank 0 warms up with min(8, 2 x 1 + 1) = 3 passes alone, rank 1 with 1; the
    mean 2 of 8 run alone, so 6 / 8 = 0.75 of the passes are paired."""
    ctx = _ctx("mixtral-8x7b", 16, 128)
    bounds = StructureBounds(ctx, CONSTANTS)
    plan = Plan(tp=1, pp=2, dp=8, ep=8, micro_batch=2, ep_overlap=True)  # 128 / (2 x 8) = 8 micro-batches
    assert plan.num_microbatches(ctx.job) == 8
    assert bounds.plan_share(plan) == 0.75 == ep_overlap_paired_share(2, 1, 8)


def test_the_own_share_bound_equals_the_step_models_bound_and_stays_below_every_step() -> None:
    """Every overlapped EP knob variant with a pipeline (shares below 1) of Mixtral-8x7B on 16 H100: the bound at
    the plan's own share equals ``busy_lower_bound`` (to rounding), never exceeds the evaluated step, and is
    above the bound at share 1 (every pass hidden: what the search used before) by the all-to-all the unpaired
    passes expose."""
    ctx = _ctx("mixtral-8x7b", 16, 128)
    bounds = StructureBounds(ctx, CONSTANTS)
    checked = tighter = 0
    for plan in enumerate_plans(ctx):
        if not (plan.ep > 1 and plan.pp > 1):
            continue
        inputs = prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
        for variant in optimistic_inputs(inputs):
            p = variant.plan
            if not p.ep_overlap:
                continue
            own = bounds.bound(p)
            assert own == pytest.approx(busy_lower_bound(variant, CONSTANTS), rel=1e-11), p.describe()
            assert own + bounds.end_of_step_bound(p) <= evaluate(variant, CONSTANTS).step_s, p.describe()
            # At share 1 (the least time of a layer key, for any pipeline shape):
            hidden = bounds._times(p, ep_share=1.0)
            assert bounds._share_times(p, bounds.plan_share(p)).moe_s >= hidden.moe_s * (1 - 1e-12)
            tighter += bounds._share_times(p, bounds.plan_share(p)).moe_s > hidden.moe_s * (1 + 1e-6)
            checked += 1
            if checked >= 60:
                break
        if checked >= 60:
            break
    assert checked >= 60
    assert tighter == checked  # every such plan has unpaired passes (share < 1), so a longer MoE layer


def test_the_interpolated_layer_time_is_the_step_models_at_that_share() -> None:
    """The MoE layer's time at a share between 0 and 1, interpolated, against ``_stage_times`` called with that
    share (the step model's own formula): equal to rounding, for both dispatchers."""
    ctx = _ctx("mixtral-8x7b", 16, 128)
    bounds = StructureBounds(ctx, CONSTANTS)
    for dispatcher in ("alltoall", "flex"):
        plan = Plan(tp=1, pp=2, dp=8, ep=8, micro_batch=2, ep_overlap=True, ep_dispatcher=dispatcher)
        alone, hidden = bounds._times(plan, ep_share=0.0), bounds._times(plan, ep_share=1.0)
        assert hidden.moe_s < alone.moe_s  # hiding the all-to-all saves more than its compute slowdown
        for share in (0.25, 0.75):
            direct = _moe_layer_s(ctx, plan, share)
            assert bounds._share_times(plan, share).moe_s == pytest.approx(direct, rel=1e-12)
            assert bounds._share_times(plan, share).moe_s <= direct


def _moe_layer_s(ctx: SearchContext, plan: Plan, share: float) -> float:
    """One MoE layer's forward + backward from a one-layer prepared stage (pp 1, as the bounds time it)."""
    flat = replace_unchecked(plan, pp=1, vpp=1, dp=plan.dp * plan.pp, pipeline_layers=())
    inp = prepare(ctx.model, ctx.cluster, ctx.job, flat, runtime=ctx.runtime)
    comm = inp.comm.with_efficiency(link_efficiency(CONSTANTS))
    work, _, moe = inp.stages[0].works[0]
    assert moe
    single = dc_replace(inp, stages=(VirtualStage(works=((work, 1, True),), num_layers=1),))
    f, b, _ = _stage_times(single, _rates_for(single, CONSTANTS), comm, CONSTANTS, 0, share)
    return sum(f.values()) + sum(b.values())


def test_dense_layers_embedding_and_head_are_timed_once_for_every_ep_knob_setting() -> None:
    """DeepSeek-V3 has dense and MoE layers: a layer key's first timing takes one timing each of the dense layer,
    the MoE layer, the embedding, the head and the MTP projection (5); its other EP dispatcher, and the share 0,
    each add only the MoE layer's (1)."""
    ctx = SearchContext(model=load_model("deepseek-v3"), cluster=load_cluster("h800-ib", num_gpus=256),
                        job=JobSpec(global_batch=1024, seq_len=4096))
    bounds = StructureBounds(ctx, CONSTANTS)
    plan = Plan(tp=2, pp=8, vpp=2, dp=16, ep=16, micro_batch=1, sp=True, ep_overlap=True, ep_dispatcher="alltoall")
    bounds._times(plan)
    assert bounds.stage_timings == 5
    bounds._times(replace_unchecked(plan, ep_dispatcher="flex"))
    assert bounds.stage_timings == 6
    bounds._times(replace_unchecked(plan, ep_dispatcher="flex"), ep_share=0.0)
    assert bounds.stage_timings == 7
    bounds._times(replace_unchecked(plan, ep_overlap=False))
    assert bounds.stage_timings == 8
    # ... and the dense layer's time is the same whatever the EP knobs (no EP traffic in it).
    fresh = StructureBounds(ctx, CONSTANTS)
    assert fresh._times(replace_unchecked(plan, ep_overlap=False)).dense_s == bounds._times(plan).dense_s


def test_dense_layers_embedding_and_head_are_timed_once_for_every_ep_degree() -> None:
    """Work without EP traffic does not depend on ep or etp (the TP and CP groups are the same partitions of the
    ranks whatever they are): a second EP degree of the same layer key adds only the MoE layer's timing (1), and
    its dense layer and head are bit-for-bit those a fresh timing of it gives."""
    ctx = SearchContext(model=load_model("deepseek-v3"), cluster=load_cluster("h800-ib", num_gpus=256),
                        job=JobSpec(global_batch=1024, seq_len=4096))
    bounds = StructureBounds(ctx, CONSTANTS)
    plan = Plan(tp=2, pp=8, vpp=2, dp=16, ep=16, micro_batch=1, sp=True, ep_overlap=True, ep_dispatcher="alltoall")
    bounds._times(plan)
    assert bounds.stage_timings == 5
    other = replace_unchecked(plan, ep=8, etp=2)
    shared = bounds._times(other)
    assert bounds.stage_timings == 6
    fresh = StructureBounds(ctx, CONSTANTS)._times(other)
    assert (shared.dense_s, shared.embedding_s, shared.head_s, shared.moe_s) == \
        (fresh.dense_s, fresh.embedding_s, fresh.head_s, fresh.moe_s)


def test_remembered_share_times_are_those_worked_out_for_each_plan() -> None:
    """``_share_times`` (and ``_share_split``, the windows' forward and backward times) remembers its answer by layer
    key, share, chunk and (for a plan leaving its EP overlap to the runtime) whether the pipeline is non-interleaved:
    for every seventh structure of Qwen3-30B-A3B on 64 H100 and its overlap-open, overlap-off, overlap-on and
    partial-recompute forms, at shares 0, 0.6 and 1, the remembered times equal those worked out for that plan alone
    (the same floats). Without the overlap-on form the share never mattered here: a memo keyed without it passed."""
    ctx = _ctx("qwen3-30b-a3b", 64, 256)
    bounds = StructureBounds(ctx, CONSTANTS)
    reference = StructureBounds(ctx, CONSTANTS)  # (its ``_times`` remembers by layer key, as before)
    checked = 0
    for i, plan in enumerate(enumerate_plans(ctx)):
        if i % 7:
            continue  # (a seventh of the space: every degree and pipeline kind still comes up)
        forms = [plan, replace_unchecked(plan, ep_overlap=False)]
        if plan.ep > 1:
            forms.append(replace_unchecked(plan, ep_overlap=True))  # (the share matters only with the overlap on)
        if plan.pp > 1:
            forms.append(replace_unchecked(plan, recompute="full", recompute_num_layers=1))
        for form in forms:
            chunk = max(form.virtual_stage_layers(ctx.model))
            alone = StructureBounds(ctx, CONSTANTS)  # (this form's splits only, worked out at each share)
            for share in (0.0, 0.6, 1.0):
                assert bounds._share_times(form, share, chunk) == reference._share_times_of(form, share, chunk)
                assert bounds._share_split(form, share, chunk) == alone._share_split(form, share, chunk)
                checked += 1
    assert checked > 500


def test_uneven_partial_recompute_bounds_time_each_run_of_layers_once_with_the_same_floats() -> None:
    """Under a partial recompute of an uneven split (Qwen3-235B's 94 layers over pp x vpp chunks of 3 and 1), the
    bounds sum per-stage times (``_arithmetic``, ``_gather_bound``): a stage between the first and the last is worked
    out once per run of layers (and gathers) and reused; the bound equals, to the last bit, the sum with every stage
    worked out on its own (``_virtual_stage_s`` per stage, then ``_busiest_rank_s``)."""
    from configurator.search.bound import _busiest_rank_s, _virtual_stage_s

    ctx = _ctx("qwen3-235b-a22b", 64, 512)
    bounds = StructureBounds(ctx, CONSTANTS)
    per_mb_s, step_s = CONSTANTS["overhead.microbatch_s"], CONSTANTS["overhead.step_s"]
    checked = ends_like_interior = 0  # (a last stage with an interior one's layers: it must not take its time)
    for plan in enumerate_plans(ctx):
        if plan.pp * plan.vpp < 4 or not plan.pipeline_layers or len(set(plan.pipeline_layers)) < 2:
            continue
        for sharding in ("distopt", "zero3"):
            form = replace_unchecked(plan, recompute="full", recompute_num_layers=1, sharding=sharding)
            if bounds._even_chunk(form):
                continue
            virtual, m = bounds._layout(form)
            last, share = len(virtual) - 1, bounds.plan_share(form)
            if sharding == "distopt":
                got = bounds._arithmetic(form)
                times = [_virtual_stage_s(bounds._share_times(form, share, sum(layers)), layers, per_mb_s / form.vpp,
                                          v, last) for v, layers in enumerate(virtual)]
                assert got == _busiest_rank_s(times, form.pp, m) + step_s, form.describe()
            else:
                got = bounds._gather_bound(form)
                gathers = bounds._stage_gathers(form)
                expected = float("inf")
                for v in bounds._window_variants(form):
                    plain = replace_unchecked(v, sharding="distopt", shard_group=0)
                    times = [_virtual_stage_s(bounds._share_times(plain, share, sum(layers)), layers,
                                              per_mb_s / form.vpp, s, last, gathers[s])
                             for s, layers in enumerate(virtual)]
                    expected = min(expected, _busiest_rank_s(times, form.pp, m))
                assert got == expected + step_s, form.describe()
            checked += 1
            ends_like_interior += virtual[-1] in virtual[1:-1]
    assert checked >= 40 and ends_like_interior >= 10, (checked, ends_like_interior)


def test_the_stage_times_memo_gives_the_floats_of_each_plan_worked_out_alone() -> None:
    """``_times`` keeps one memo per base (``_stage_times``' ``memo``: a work's compute, expert imbalance, TP
    all-reduce, raw EP exchange per dispatcher and CP exchange per CP type) for every plan timed on it. Qwen3-30B-A3B
    on 64 H100 (CP, EP, expert TP; both dispatchers): every knob variant and recompute form of a sample of structures,
    timed after all the others on one ``StructureBounds``, has the floats a fresh one gives it (its first timing on a
    base works everything out). A memo keyed without the dispatcher (the flex dispatcher's links differ), or without
    the CP type, fails it."""
    ctx = _ctx("qwen3-30b-a3b", 64, 256)
    shared = StructureBounds(ctx, CONSTANTS)
    forms = []
    for i, plan in enumerate(enumerate_plans(ctx)):
        if i % 29 or plan.ep == 1:
            continue
        for recompute, k, modules in (("none", 0, ()), ("selective", 0, ("layernorm", "moe")), ("full", 0, ()),
                                      ("full", 1, ())):
            form = replace_unchecked(plan, recompute=recompute, recompute_num_layers=k, recompute_modules=modules)
            for variant in optimistic_inputs(prepare(ctx.model, ctx.cluster, ctx.job, form, runtime=ctx.runtime)):
                forms.append(variant.plan)
                shared._times(variant.plan, 4, 1.0)
    assert len({(p.ep_dispatcher, p.cp_comm) for p in forms}) >= 4 and len(forms) >= 200
    for p in forms:
        alone = StructureBounds(ctx, CONSTANTS)  # (this plan's timings only)
        assert shared._times(p, 4, 1.0) == alone._times(p, 4, 1.0), p.describe()
        assert shared._split_times(p, 4, 0.0) == alone._split_times(p, 4, 0.0), p.describe()


def test_dropping_dominated_knob_variants_leaves_every_bound_the_same_float(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bound`` and ``_gather_bound`` take the least over a layer key's knob variants, less those another matches or
    beats in every kind of time (``bound._undominated``): on Qwen3-30B-A3B on 64 H100 (CP exchanges, EP dispatchers)
    every structure's bound, and its ZeRO-3 form's relaxed bound, are the floats of the least over all variants, and
    variants were dropped. Keeping the slowest variant instead fails it. ZeRO-2 under PP shares the distributed
    optimizer's end-of-step terms (``_end``): the floats ``_end_terms`` works out for it (without PP it does not)."""
    from configurator.search import bound as bound_module

    ctx = _ctx("qwen3-30b-a3b", 64, 256)
    pruned = StructureBounds(ctx, CONSTANTS)
    dropped = 0
    original = bound_module._undominated

    def counting(times: list) -> list:
        nonlocal dropped
        kept = original(times)
        dropped += len(times) - len(kept)
        return kept

    plans = [p for i, p in enumerate(enumerate_plans(ctx)) if i % 5 == 0]
    monkeypatch.setattr(bound_module, "_undominated", counting)
    lows = [(pruned.bound(p), pruned.relaxed_bound(replace_unchecked(p, sharding="zero3"))) for p in plans]
    monkeypatch.setattr(bound_module, "_undominated", lambda times: times)
    whole = StructureBounds(ctx, CONSTANTS)
    assert lows == [(whole.bound(p), whole.relaxed_bound(replace_unchecked(p, sharding="zero3"))) for p in plans]
    assert dropped > len(plans)
    for p in plans:  # (without PP, ZeRO-2 reduce-scatters per micro-batch and gathers once: other terms)
        zero2 = replace_unchecked(p, sharding="zero2")
        pruned._end(replace_unchecked(p, sharding="distopt"))
        assert pruned._end(zero2) == StructureBounds(ctx, CONSTANTS)._end_terms(zero2), zero2.describe()
