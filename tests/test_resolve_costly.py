"""``resolve.costly_terms``: the lower bound the exhaustive search gives a structure whose least form does not fit, from
its memory forms per sharding, before resolving it. It must hold for every option ``resolve`` gives the structure (its
bound as the search checks it, and its evaluated step), rest on claims that hold (step bounds rise along the recompute
ladders), and prune: the search resolves fewer structures and returns the same plans."""

from __future__ import annotations

import random

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.cost.constants import load_calibration
from configurator.search import optimize
from configurator.search.bound import StructureBounds
from configurator.search.optimize import _cost, _search_caches, search
from configurator.search.resolve import (_module_lists, _nested, costly_terms, needs_full_recompute,
                                         offloads_with_full_recompute, recompute_ladder, resolve, resolve_least,
                                         sharding_forms)
from configurator.search.space import SearchContext, enumerate_plans
from configurator.specs.plan import Plan, replace_unchecked

JOB = JobSpec(global_batch=512, seq_len=4096)
JOBS = [("mixtral-8x22b", "dgx-h100", 64), ("mixtral-8x22b", "dgx-h100", 512), ("qwen3-235b-a22b", "dgx-h100", 64),
        ("deepseek-v3", "h800-ib", 512)]


def _ctx(model: str, cluster: str, gpus: int) -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=max(512, gpus), seq_len=4096))


def _unfitting(ctx: SearchContext, count: int, seed: int) -> list[Plan]:
    """Random structures whose least form does not fit (the ones the search gives terms)."""
    structures = list(enumerate_plans(ctx))
    random.Random(seed).shuffle(structures)
    return [s for s in structures if resolve_least(ctx, s) is None][:count]


@pytest.mark.parametrize("model,cluster,gpus", JOBS)
def test_costly_terms_are_below_every_option_of_the_structure(model: str, cluster: str, gpus: int) -> None:
    """Each bound ``costly_terms`` gives on the way (before and after each refinement) is at most every option of
    ``resolve``: its bound as the search takes it (``bound`` + ``end_of_step_bound``) and its evaluated step. Where
    it has no terms (nothing fits any form), ``resolve`` has no option."""
    ctx = _ctx(model, cluster, gpus)
    constants = load_calibration()
    checked = informative = 0
    with _search_caches():
        bounds = StructureBounds(ctx, constants)
        for structure in _unfitting(ctx, 14, seed=gpus):
            terms = costly_terms(ctx, bounds, structure)
            options = resolve(ctx, structure).options
            if terms is None:
                assert not options, structure.describe()
                continue
            lows = [terms.low]
            while not terms.settled:
                terms.refine()
                lows.append(terms.low)
            assert lows == sorted(lows), structure.describe()  # (each refinement only raises it)
            for option in options:
                own = bounds.bound(option.plan) + bounds.end_of_step_bound(option.plan)
                step = _cost(ctx, option, constants).step.step_s
                assert lows[-1] <= own <= step * (1 + 1e-9), (structure.describe(), option.plan.describe(), option.why)
                checked += 1
            informative += lows[-1] > bounds.options_floor(structure, bounds.bound(structure))
    assert checked >= 10
    assert informative >= 1  # (above the bound the search had for the structure: it can prune)


@pytest.mark.parametrize("model,cluster,gpus", JOBS[:3])
def test_step_bounds_rise_along_the_recompute_ladders(model: str, cluster: str, gpus: int) -> None:
    """``short_recompute_kinds`` bounds a kind's options by its first form that fits: along the partial-recompute depths
    and the nested ``--recompute-modules`` lists (memory falls along both) the step bound never falls."""
    ctx = _ctx(model, cluster, gpus)
    lists = _module_lists(ctx.model, ctx.job.precision)
    assert _nested(lists)
    with _search_caches():
        bounds = StructureBounds(ctx, load_calibration())
        for structure in _unfitting(ctx, 6, seed=gpus + 1):
            base = replace_unchecked(structure, recompute="selective", recompute_num_layers=0)
            module_bounds = [bounds.bound(replace_unchecked(base, recompute_modules=m)) for m in lists]
            assert module_bounds == sorted(module_bounds), structure.describe()
            depths = [k for r, k in recompute_ladder(ctx, structure).steps if r == "full" and k]
            depth_bounds = [bounds.bound(replace_unchecked(structure, recompute="full", recompute_num_layers=k))
                            for k in depths]
            assert depth_bounds == sorted(depth_bounds), structure.describe()
            assert not depth_bounds or depth_bounds[0] >= bounds.bound(structure)


def test_sharding_forms_mark_the_plain_sharding_last() -> None:
    """Where a sharding fits without recompute and offload with the margin free, ``resolve`` gives it that option only
    and tries no more sharding: ``sharding_forms`` stops there, and the options of ``resolve`` use no later sharding."""
    ctx = _ctx("mixtral-8x22b", "dgx-h100", 512)
    seen = 0
    with _search_caches():
        for structure in _unfitting(ctx, 40, seed=3):
            forms = sharding_forms(ctx, structure)
            if forms is None or not forms[-1].plain:
                continue
            seen += 1
            allowed = {f.form.sharding for f in forms}
            for option in resolve(ctx, structure).options:
                assert option.plan.sharding in allowed, (structure.describe(), option.plan.describe())
                if option.plan.sharding == forms[-1].form.sharding:
                    assert option.plan.recompute == "none" and not option.plan.offload
    assert seen >= 3


def test_the_search_resolves_fewer_structures_and_keeps_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixtral-8x22B on 64 H100 (most structures fit only with recompute or offload, mostly ZeRO-3 partial recompute,
    and none of those options can beat the 5th best): with the terms the search holds about 160 options where it held
    about 9,000 without them (``costly_terms`` returning None: the search before them), and ranks the same plans
    with the same steps."""
    ctx = _ctx("mixtral-8x22b", "dgx-h100", 64)
    with_terms = search(ctx, top_k=5, workers=1)
    monkeypatch.setattr(optimize, "costly_terms", lambda *_: None)
    without = search(ctx, top_k=5, workers=1)
    assert [(e.plan, e.step.step_s) for e in with_terms.ranked] == [(e.plan, e.step.step_s) for e in without.ranked]
    assert len(with_terms.ranked) == 5
    assert with_terms.options * 10 < without.options


def test_needs_full_recompute_structures_keep_their_floor() -> None:
    """A structure where every option recomputes all layers gets terms too (the search takes the higher of them and
    its full-recompute floor): its terms still hold for its options."""
    ctx = _ctx("qwen3-235b-a22b", "dgx-h100", 64)
    constants = load_calibration()
    seen = 0
    with _search_caches():
        bounds = StructureBounds(ctx, constants)
        for structure in _unfitting(ctx, 80, seed=5):
            if not (offloads_with_full_recompute(ctx, structure) or needs_full_recompute(ctx, structure)):
                continue
            terms = costly_terms(ctx, bounds, structure)
            if terms is None:
                continue
            terms.raise_above(float("inf"))
            for option in resolve(ctx, structure).options:
                assert option.plan.recompute == "full"
                assert terms.low <= bounds.bound(option.plan) + bounds.end_of_step_bound(option.plan)
            seen += 1
    assert seen >= 3
