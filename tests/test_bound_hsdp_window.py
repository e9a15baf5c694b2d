"""HSDP's end-of-step bound takes the window that hides its replica all-reduce, without preparing the plan.

``evaluate`` hides HSDP's gradient all-reduce across the replicas under pipeline rank 0's last backward. The
all-reduce grows with the replicas (dp / shard group): on Qwen3-235B at 131,072 H100 it is up to seconds. The bound
took an infinite window for every plan that needs a preparation, so it charged HSDP only the slowdown of hiding that
all-reduce, about 0.1 s under the step of the HSDP options the search costed there. ``_prepared_windows_s`` bounds
the window from above with the distributed-optimizer form's and stage 0's per-layer gathers and reduce-scatters;
these tests check that it is never below the backward it bounds (a window too small would put the bound above a
step, and the search could drop the optimum), that the bound stays below every step, and that pruning with it keeps
the search's answer."""

from __future__ import annotations

import random
from functools import lru_cache

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import hardware_default, load_calibration
from configurator.cost.step import evaluate, operation_times, prepare
from configurator.search import bound as bound_module
from configurator.search.bound import StructureBounds
from configurator.search.knobs import optimistic_inputs
from configurator.search.optimize import search
from configurator.search.space import SearchContext, enumerate_plans, hsdp_shard_group
from configurator.specs.plan import replace_unchecked

CONSTANTS = load_calibration()


@lru_cache(maxsize=None)
def _space(model: str, gpus: int) -> tuple[SearchContext, tuple]:
    """One global batch sequence per GPU, as ``benchmarks/search_speed.py``'s large jobs."""
    ctx = SearchContext(model=load_model(model), cluster=load_cluster("dgx-h100", num_gpus=gpus),
                        job=JobSpec(global_batch=gpus, seq_len=4096))
    return ctx, tuple(enumerate_plans(ctx))


@pytest.mark.parametrize(("model", "gpus"), [("qwen3-235b-a22b", 131072), ("mixtral-8x7b", 8192)])
def test_the_hsdp_window_covers_rank_0s_last_backward_and_the_bound_stays_below_the_step(model: str,
                                                                                           gpus: int) -> None:
    """HSDP forms (no, selective, full and partial recompute) of sampled structures, under every knob variant the
    search evaluates: ``_windows_s``' backward window is at least virtual stage 0's backward (``operation_times``:
    what ``evaluate``'s schedule runs last on rank 0, the window of the replica all-reduce; Megatron has no
    gradient-accumulation hook, so nothing is added to it), and the option's bound with ``end_of_step_bound`` is at most its step. Some windows
    need stage 0's gathers: the distributed-optimizer form's window alone is below the backward there (so the test
    fails if ``_prepared_windows_s`` leaves them out), and the new end term exceeds the old one (the slowdown alone)."""
    ctx, plans = _space(model, gpus)
    assert ctx.runtime == "megatron"
    bounds = StructureBounds(ctx, CONSTANTS)
    slowdown = hardware_default("nccl_overlap_compute_slowdown")
    rng = random.Random(3)
    checked = needs_gathers = raised = 0
    for plan in rng.sample(plans, len(plans)):
        group = hsdp_shard_group(ctx, plan)
        if not group:
            continue
        for recompute, k in (("none", 0), ("selective", 0), ("full", 0), ("full", 1)):
            form = replace_unchecked(plan, sharding="hsdp", shard_group=group, recompute=recompute,
                                     recompute_num_layers=k)
            for variant in optimistic_inputs(prepare(ctx.model, ctx.cluster, ctx.job, form, runtime=ctx.runtime)):
                times = operation_times(variant, CONSTANTS)
                window = bounds._windows_s(variant.plan)[0]
                assert window >= times.backward_s[0], variant.plan.describe()
                plain = bounds._windows_s(replace_unchecked(variant.plan, sharding="distopt", shard_group=0))[0]
                needs_gathers += plain < times.backward_s[0]
                end = bounds.end_of_step_bound(variant.plan)
                assert bounds.bound(variant.plan) + end <= evaluate(variant, CONSTANTS).step_s, variant.plan.describe()
                assert bounds.relaxed_bound(variant.plan) + end <= times.step.step_s, variant.plan.describe()
                raised += end > slowdown * bounds._end(variant.plan)[4] * (1 + 1e-6)
                checked += 1
        if checked >= 48:
            break
    assert checked >= 48
    assert raised > 0
    if model == "qwen3-235b-a22b":
        assert needs_gathers > 0


def test_the_hsdp_window_prunes_resolutions_without_changing_the_top_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixtral-8x7B on 8,192 H100: the same five plans and steps as with the infinite window (before), from fewer
    memory resolutions (115 structures resolved against 334 when written)."""
    ctx, _ = _space("mixtral-8x7b", 8192)
    tightened = search(ctx, top_k=5, workers=1)
    monkeypatch.setattr(bound_module.StructureBounds, "_with_stage0_gathers",
                        lambda self, plan, windows: (float("inf"), float("inf")))
    plain = search(ctx, top_k=5, workers=1)
    assert [(e.plan, e.step.step_s) for e in tightened.ranked] == [(e.plan, e.step.step_s) for e in plain.ranked]
    assert len(tightened.ranked) == 5
    assert tightened.feasible < plain.feasible



def test_a_structures_hsdp_floor_term_is_below_every_hsdp_options_exposed_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """``options_floor`` adds the least over the shardings of each one's exposed end-of-step collectives and least
    optimizer step; HSDP's now with its window at the largest over the recompute forms (full recompute's backward is
    the longest), which must cover every HSDP option's own window. With HSDP the only sharding (``framework_shardings``
    narrowed) and ``lb`` 0 and its per-layer gathers left out (``_stage_gathers``: the floor adds m x a rank's to
    HSDP's term), the floor is that term alone: on Qwen3-235B at 131,072 H100, where the replica all-reduce is long,
    it is at most the exposed end-of-step collectives (with the option's own windows, which cover its last backward:
    the test above) plus the optimizer step at its least over the offload fractions of each HSDP recompute form of
    sampled structures, under every knob variant the search evaluates. (The window of the form without recompute
    alone, or none, exceeds them.)"""
    ctx, plans = _space("qwen3-235b-a22b", 131072)
    monkeypatch.setattr(bound_module, "framework_shardings", lambda _ctx, _plan: ("hsdp",))
    monkeypatch.setattr(StructureBounds, "_stage_gathers", lambda self, plan: [0.0] * (plan.pp * plan.vpp))
    bounds = StructureBounds(ctx, CONSTANTS)
    checked = 0
    for plan in random.Random(5).sample(plans, len(plans)):
        group = hsdp_shard_group(ctx, plan)
        if not group or plan.recompute != "none":
            continue
        term = bounds.options_floor(plan, 0.0)
        for recompute, k in (("none", 0), ("selective", 0), ("full", 0), ("full", 1)):
            form = replace_unchecked(plan, sharding="hsdp", shard_group=group, recompute=recompute,
                                     recompute_num_layers=k)
            for variant in optimistic_inputs(prepare(ctx.model, ctx.cluster, ctx.job, form, runtime=ctx.runtime)):
                p = variant.plan
                terms = bounds._end(p)
                end = (bounds._exposed_s(terms, bounds._windows_s(p)) + bounds._least_optimizer_s(p, terms, 0.0)) \
                    * (1.0 - bound_module.END_BOUND_SLACK)
                assert term <= end, p.describe()
                checked += 1
        if checked >= 64:
            break
    assert checked >= 64
