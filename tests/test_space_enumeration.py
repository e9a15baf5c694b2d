"""The enumeration's caches change nothing (the same structures, counts and reasons as a plain walk over the axes),
and the exhaustive search's family pruning drops only structures that cannot enter its top k."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.cost.step import prepare
from configurator.search.bound import StructureBounds
from configurator.search.knobs import best_knobs
from configurator.search.optimize import search
from configurator.search.resolve import resolve
from configurator.search.space import (AXES, SearchContext, SpaceStats, _head_aware_variant, enumerate_plans,
                                       structure_plan)
from configurator.specs.plan import plan_violations

CONSTANTS = load_calibration()


def _ctx(model: str, cluster: str, gpus: int, batch: int, seq: int = 4096, framework: str = "megatron",
         runtime: str = "megatron") -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=seq), framework=framework, runtime=runtime)


def _plain_walk(ctx: SearchContext) -> tuple[list, int, int, Counter]:
    """The space as the axes define it, with no cache: every point, its legality, its head-aware split."""
    stats = SpaceStats()
    out = []

    def walk(i: int, chosen: dict) -> None:
        if i == len(AXES):
            stats.generated += 1
            plan = structure_plan(ctx, chosen)
            reasons = plan_violations(ctx.model, ctx.job, plan, ctx.num_gpus)
            if reasons:
                stats.pruned[re.sub(r"\d+", "N", reasons[0])] += 1
                return
            out.append(plan)
            alternative = _head_aware_variant(ctx, plan)
            if alternative is not None:
                stats.generated += 1
                out.append(alternative)
            return
        for value in AXES[i].values(ctx, chosen, stats):
            walk(i + 1, {**chosen, AXES[i].name: value})

    walk(0, {})
    return out, stats.generated, len(out), stats.pruned


@pytest.mark.parametrize("ctx", [_ctx("deepseek-v3", "h800-ib", 32, 256),  # 61 layers: uneven splits
                                 _ctx("mixtral-8x7b", "dgx-h100", 32, 256),
                                 _ctx("llama3-70b", "dgx-h100", 64, 128, framework="deepspeed", runtime="deepspeed"),
                                 _ctx("qwen3-235b-a22b", "gb200-nvl72", 64, 512, framework="torchtitan",
                                      runtime="fsdp")],
                         ids=["deepseek-v3", "mixtral", "deepspeed", "torchtitan"])
def test_the_enumeration_is_the_plain_walk_over_the_axes(ctx: SearchContext) -> None:
    stats = SpaceStats()
    plans = list(enumerate_plans(ctx, stats))
    plain, generated, legal, pruned = _plain_walk(ctx)
    assert plans == plain
    assert (stats.generated, stats.legal, stats.pruned) == (generated, legal, pruned)
    if ctx.model.name == "deepseek-v3":  # 61 layers: uneven splits and head-aware ones, both from the caches
        assert {p.pipeline_layers for p in plans if p.pp > 1} - {()}


def test_a_pruned_familys_members_are_all_worse_than_the_kth_best() -> None:
    """Llama-3-8B on 16 H100: the families whose shared bound reaches the k-th best step are never opened; every
    option of every member of the two closest to it, costed under its best knobs, is slower than that step."""
    ctx = _ctx("llama3-8b", "dgx-h100", 16, 64)
    result = search(ctx, top_k=3, constants=CONSTANTS, method="exhaustive", workers=1)
    kth = result.ranked[-1].step.step_s
    bounds = StructureBounds(ctx, CONSTANTS)
    families: dict[tuple, list] = {}
    for plan in enumerate_plans(ctx):
        key = bounds.family_key(plan)
        if key is not None:
            families.setdefault(key, []).append(plan)
    shared = {key: bounds.family_bound(members) for key, members in families.items()}
    pruned = sorted((key for key in families if shared[key] >= kth), key=shared.__getitem__)
    assert len(pruned) >= 5 and len(pruned) < len(families)
    costed = 0
    for key in pruned[:2]:  # the pruned families closest to the k-th best: where a wrong bound would show first
        for plan in families[key]:
            for option in resolve(ctx, plan).options:
                _, step = best_knobs(prepare(ctx.model, ctx.cluster, ctx.job, option.plan), CONSTANTS)
                assert step.step_s > kth, option.plan.describe()
                costed += 1
    assert costed > 10


def test_a_split_variant_found_illegal_once_is_dropped_for_every_structure_sharing_its_split(monkeypatch) -> None:
    """The enumeration checks a head-aware variant's legality once per (pp, vpp, default split) and reuses it (a legal
    structure's variant differs only in the split, whose sum is the only rule reading it). With a split that drops a
    layer at pp = 2 (illegal: the layers no longer sum to the model's) and the real one elsewhere, the cached
    enumeration still equals the plain walk that checks every variant, and drops those variants."""
    import configurator.layouts as layouts

    real = layouts.alternative_layout

    def short_at_pp2(model, job, plan):  # (the real split elsewhere; one layer short at pp = 2)
        layout = real(model, job, plan)
        if plan.pp == 2:
            virtual = plan.virtual_stage_layers(model)
            return (virtual[0] - 1, *virtual[1:])
        return layout

    monkeypatch.setattr(layouts, "alternative_layout", short_at_pp2)
    ctx = _ctx("deepseek-v3", "h800-ib", 32, 256)
    stats = SpaceStats()
    plans = list(enumerate_plans(ctx, stats))
    plain, generated, legal, pruned = _plain_walk(ctx)
    assert plans == plain and (stats.generated, stats.legal) == (generated, legal)
    assert any(p.pp == 2 for p in plans) and not any(p.pp == 2 and sum(p.pipeline_layers) != 61 for p in plans if
                                                     p.pipeline_layers)
    assert any(p.pipeline_layers for p in plans if p.pp > 2)  # (the real splits still come)
