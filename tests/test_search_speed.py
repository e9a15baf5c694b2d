"""The fast search gives the same answers as the slow one, its budget is honest, and it holds nothing
per GPU: shared per-layer bounds equal ``busy_lower_bound`` (under the most favourable open knobs); the lazy memory resolutions equal
``resolve``; a budget that cuts a search short marks it truncated (CLI banner included); the default
budget gives the golden top plans even while other processes load every core."""

from __future__ import annotations

import json
from dataclasses import replace as dc_replace
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.bench import load_scenarios
from configurator.cost.comm import SHAPE_CACHE
from configurator.cost.constants import load_calibration
from configurator.cost.step import evaluate, prepare
from configurator.search.bound import StructureBounds
from configurator.search.knobs import knob_lower_bound, knob_variants, optimistic_plans
from configurator.search.optimize import search
from configurator.memory import estimate_memory
from configurator.recompute import selective_module_ladder
from configurator.margin import NO_MARGIN
from configurator.search.resolve import (_least_fitting, _least_modules, _nested, recompute_ladder, needs_full_recompute, resolve, resolve_full_recompute,
                                         resolve_least, union_modules)
from configurator.specs.plan import plan_violations
from configurator.search.space import SearchContext, enumerate_plans
from configurator.specs.plan import Plan, replace_unchecked

REPO = Path(__file__).resolve().parent.parent
CONSTANTS = load_calibration()
GOLDEN = {g["name"]: g for g in json.loads((REPO / "benchmarks" / "golden.json").read_text())["scenarios"]}
SCENARIOS = {s.name: s for s in load_scenarios(REPO / "benchmarks" / "scenarios.json")}


def ctx_for(model: str, cluster: str, gpus: int, batch: int, seq: int, runtime: str = "megatron") -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=seq), runtime=runtime)


@pytest.mark.parametrize("ctx", [ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096),
                                 ctx_for("llama3-70b", "dgx-h100", 64, 128, 8192),
                                 ctx_for("deepseek-v3", "h800-ib", 256, 1024, 4096, runtime="nemo")],
                         ids=["mixtral", "llama3-70b", "deepseek-v3-nemo"])
def test_shared_layer_bounds_equal_the_step_models_bound(ctx: SearchContext) -> None:
    plans = list(enumerate_plans(ctx))
    bounds = StructureBounds(ctx, CONSTANTS)
    sample = random.Random(0).sample(plans, min(60, len(plans)))
    # Recompute and sharding variants too (options are bounded the same way).
    sample += [replace_unchecked(p, recompute="full", recompute_num_layers=0) for p in sample[:10]]
    sample += [replace_unchecked(p, recompute="selective") for p in sample[:10]]
    # Megatron-Core module lists (they share one-layer stages with the plan's other recompute forms).
    sample += [replace_unchecked(p, recompute="selective", recompute_modules=m) for p in sample[:10]
               for m in selective_module_ladder(ctx.model)[1:3]]
    # Partial recompute (k layers of each chunk: timed per chunk size), incl. uneven splits and ZeRO-2 under PP.
    sample += [replace_unchecked(p, recompute="full", recompute_num_layers=k, sharding=sh)
               for p in sample[10:25] for k in (1, 2) for sh in ("distopt", "zero2") if p.dp * p.cp > 1]
    # ZeRO-2 with and without PP (under PP it reduces once per step: timed from the shared layer keys),
    # ZeRO-3 (dp-dependent gathers: one preparation shared by the knob variants).
    sample += [replace_unchecked(p, sharding=sh) for p in sample[:20] if p.dp * p.cp > 1 for sh in ("zero2", "zero3")]
    for plan in sample:
        # The step model's bound under the most favourable open communication knobs (search/knobs.py).
        exact = knob_lower_bound(prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime), CONSTANTS)
        # The EP all-to-all hides only on passes paired with another micro-batch, a share set by the pipeline
        # shape: the layer key's times at shares 0 and 1, interpolated at the plan's own (bound.py ``_at_share``).
        assert bounds.bound(plan) == pytest.approx(exact, rel=1e-11), plan.describe()
        assert bounds.bound(plan) <= exact * (1 + 1e-15), plan.describe()
    # Pipeline variants share their layer times (each plan is bounded under each of its knob settings), and the
    # dense layers, embedding and head are timed once for all EP knob settings and shares.
    settings = sum(len(optimistic_plans(p, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe, ctx.cluster))
                   for p in sample)
    # (Timed alone, each setting would take one timing per layer kind plus the embedding, head and MTP projection:
    # 4 or 5; an overlapped EP setting is timed at two shares.)
    assert bounds.stage_timings < 3 * settings, (bounds.stage_timings, settings)


@pytest.mark.parametrize("ctx", [ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096),
                                 ctx_for("deepseek-v3", "h800-ib", 256, 1024, 4096)], ids=["mixtral", "deepseek-v3"])
def test_a_familys_shared_bound_is_below_each_members_bound(ctx: SearchContext) -> None:
    """The exhaustive search drops whole families (structures differing only in pp, vpp, dp and the split)
    on one bound: it must never exceed the bound of any member, or an optimum could be skipped."""
    bounds = StructureBounds(ctx, CONSTANTS)
    families: dict[tuple, list[Plan]] = {}
    for plan in enumerate_plans(ctx):
        key = bounds.family_key(plan)
        if key is not None:
            families.setdefault(key, []).append(plan)
    assert len(families) > 20 and max(len(m) for m in families.values()) > 3
    for key in random.Random(2).sample(sorted(families, key=repr), 40):
        members = families[key]
        shared = bounds.family_bound(members)
        own = [bounds.bound(p) for p in members]
        assert shared < min(own), members[0].describe()
        assert shared > 0.3 * min(own)  # a useful bound, not a trivial one


@pytest.mark.parametrize("ctx", [ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096),
                                 ctx_for("deepseek-v3", "h800-ib", 256, 1024, 4096, runtime="nemo")],
                         ids=["mixtral", "deepseek-v3-nemo"])
def test_a_familys_lazy_bound_is_below_its_shared_bound(ctx: SearchContext) -> None:
    """The search queues a family under ``lazy_family_bound`` (the EP all-to-all overlapped at share 1 for every
    knob variant) and works out ``family_bound`` only at the front: the lazy one must never exceed it (nor so any
    member's bound), and must be close enough to rule families out."""
    bounds = StructureBounds(ctx, CONSTANTS)
    families: dict[tuple, list[Plan]] = {}
    for plan in enumerate_plans(ctx):
        key = bounds.family_key(plan)
        if key is not None:
            families.setdefault(key, []).append(plan)
    ratios = []
    for key in random.Random(3).sample(sorted(families, key=repr), 40):
        members = families[key]
        lazy, shared = bounds.lazy_family_bound(members), bounds.family_bound(members)
        assert lazy < shared, members[0].describe()
        ratios.append(lazy / shared)
    assert sorted(ratios)[len(ratios) // 2] > 0.8  # a useful bound: the overlap changes a part of the EP traffic


def test_a_familys_lazy_bound_is_below_every_members_step() -> None:
    """Mixtral-8x7B on 16 H100 (EP up to 8, pipelines with and without VPP): a sample of families' lazy bounds are
    below the step model's own bound (``knob_lower_bound``) of sampled members, prepared, and the evaluated step of
    the least-bounded of them under every knob variant."""
    ctx = ctx_for("mixtral-8x7b", "dgx-h100", 16, 128, 4096)
    bounds = StructureBounds(ctx, CONSTANTS)
    families: dict[tuple, list[Plan]] = {}
    for plan in enumerate_plans(ctx):
        key = bounds.family_key(plan)
        if key is not None and plan.ep > 1:
            families.setdefault(key, []).append(plan)
    assert len(families) >= 8
    rng = random.Random(4)
    for key in rng.sample(sorted(families, key=repr), 6):
        members = families[key]
        lazy = bounds.lazy_family_bound(members)
        steps = []
        for p in rng.sample(members, min(4, len(members))):
            inputs = prepare(ctx.model, ctx.cluster, ctx.job, p, runtime=ctx.runtime)
            assert lazy < knob_lower_bound(inputs, CONSTANTS), p.describe()
            steps.append(inputs)
        least = min(steps, key=lambda i: knob_lower_bound(i, CONSTANTS))
        for variant in knob_variants(least.plan, ctx.runtime, ctx.model.num_attention_heads, ctx.model.is_moe,
                                     ctx.cluster):
            assert lazy < evaluate(dc_replace(least, plan=variant, _rates={}, _schedules={}), CONSTANTS).step_s


@pytest.mark.parametrize("ctx", [ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096),
                                 ctx_for("llama3-70b", "dgx-h100", 64, 128, 8192),
                                 ctx_for("deepseek-v3", "h800-ib", 512, 512, 4096)],
                         ids=["mixtral", "llama3-70b", "deepseek-v3"])
def test_a_sharded_options_relaxed_bound_is_below_its_own(ctx: SearchContext) -> None:
    """A ZeRO-3 / HSDP / ZeRO-2 option waits behind its relaxed bound before it is prepared: the distributed
    optimizer's bound, plus each stage's first-layer gather under ZeRO-3/HSDP. It must never exceed the option's
    own bound, or a better option could be skipped (partial recompute too: its layer times are keyed by the
    recomputed share); and the gathers must make it tighter than the distributed optimizer's bound alone."""
    bounds = StructureBounds(ctx, CONSTANTS)
    checked = tighter = 0
    for plan in random.Random(1).sample(list(enumerate_plans(ctx)), 40):
        if plan.dp * plan.cp <= 1:
            continue
        group = 8 // plan.tp
        chunk = max(plan.virtual_stage_layers(ctx.model))
        for sharding, shard_group in (("zero3", 0), ("zero2", 0), ("hsdp", group)):
            if sharding == "hsdp" and (group < 2 or (plan.dp * plan.cp) % group):
                continue
            option = replace_unchecked(plan, sharding=sharding, shard_group=shard_group)
            forms = [option] + ([replace_unchecked(option, recompute="full", recompute_num_layers=chunk // 2)]
                                if chunk >= 2 else [])
            for form in forms:
                if bounds.needs_preparation(form):
                    relaxed = bounds.relaxed_bound(form)
                    assert relaxed <= bounds.bound(form), form.describe()
                    distopt = bounds.bound(replace_unchecked(form, sharding="distopt", shard_group=0))
                    tighter += sharding != "zero2" and relaxed > distopt
                    checked += 1
    assert checked > 30
    assert tighter > checked / 4


@pytest.mark.parametrize("ctx", [ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096),
                                 ctx_for("llama3-70b", "dgx-h100", 64, 128, 8192, runtime="fsdp")],
                         ids=["mixtral-megatron", "llama3-70b-fsdp"])
def test_optimistic_plans_are_the_knob_variants_with_no_open_overlap_off(ctx: SearchContext) -> None:
    """The bounds' optimistic variants, built directly, are exactly ``knob_variants`` filtered (same order)."""
    heads, moe = ctx.model.num_attention_heads, ctx.model.is_moe
    plans = random.Random(3).sample(list(enumerate_plans(ctx)), 150)
    plans += [replace_unchecked(p, tp_overlap=False, cp_comm="p2p") for p in plans[:20]]  # knobs fixed by the plan
    for plan in plans:
        expected = [v for v in knob_variants(plan, ctx.runtime, heads, moe)
                    if (plan.tp_overlap is not None or v.tp_overlap is not False)
                    and (plan.ep_overlap is not None or v.ep_overlap is not False)
                    and (plan.cuda_graphs is not None or v.cuda_graphs is not False)]
        assert optimistic_plans(plan, ctx.runtime, heads, moe) == expected, plan.describe()


def _options(res) -> list[tuple[Plan, str]]:  # type: ignore[no-untyped-def]
    return [(o.plan, o.why) for o in res.options]


@pytest.mark.parametrize("name", ["llama3-70b-h100-8-memory-tight", "mixtral-8x7b-h100-64", "qwen3-30b-a3b-gb200-8-fp8"])
def test_lazy_resolutions_give_resolves_answer(name: str) -> None:
    ctx = SCENARIOS[name].ctx
    plans = list(enumerate_plans(ctx))
    sample = random.Random(1).sample(plans, min(80, len(plans)))
    least = full = 0
    for plan in sample:
        exact = resolve(ctx, plan)
        quick = resolve_least(ctx, plan)
        if quick is not None:
            least += 1
            assert _options(quick) == _options(exact), plan.describe()
        elif needs_full_recompute(ctx, plan):
            full += 1
            short = resolve_full_recompute(ctx, plan)
            assert _options(short) == _options(exact), plan.describe()
            assert short.smallest_need_bytes == pytest.approx(exact.smallest_need_bytes)
            assert all(o.plan.recompute == "full" and not o.plan.recompute_num_layers for o in exact.options)
    assert least + full > 0


@pytest.mark.parametrize("name", ["mixtral-8x7b-h100-64", "qwen3-30b-a3b-gb200-8-fp8", "deepseek-v3-h800-2048-fp8"])
def test_the_least_module_list_is_found_without_estimating_every_list(name: str) -> None:
    """``resolve._least_modules`` bisects the ``--recompute-modules`` ladder (each list drops what the one before
    it drops, so memory only falls along it) or, where the lists are not nested, first checks their union (which
    keeps the least): the same option as estimating every list in order, stage by stage memory that never
    grows along a nested ladder, and a union that never needs more than any list."""
    ctx = SCENARIOS[name].ctx
    ladder = selective_module_ladder(ctx.model, ctx.job.precision)[1:]
    union = union_modules(ladder)
    assert ladder and set(union) == {m for modules in ladder for m in modules}
    plans = list(enumerate_plans(ctx))
    found = 0
    for plan in random.Random(2).sample(plans, min(8, len(plans))):
        for sharding in ("distopt", "zero3"):
            base = replace_unchecked(plan, sharding=sharding, recompute="selective")
            mems = [estimate_memory(ctx.model, ctx.cluster, ctx.job, replace_unchecked(base, recompute_modules=m),
                                    runtime=ctx.runtime) for m in (*ladder, union)]
            for mem in mems[:-1]:
                assert all(u.total_bytes <= s.total_bytes for u, s in zip(mems[-1].stages, mem.stages))
            if _nested(tuple(ladder)):
                for a, b in zip(mems, mems[1:-1]):
                    assert all(y.total_bytes <= x.total_bytes for x, y in zip(a.stages, b.stages))
            # The same option as a scan, against a capacity between the lists' peaks (so that some fit).
            peaks = sorted(m.peak_bytes for m in mems[:-1])
            for cap in {peaks[0] * 0.99, peaks[len(peaks) // 2], peaks[-1] * 1.01}:
                small = dc_replace(ctx, cluster=dc_replace(ctx.cluster, gpu=dc_replace(ctx.cluster.gpu, memory_bytes=int(cap))))
                scan = next((m for m, mem in zip(ladder, mems)
                             if not plan_violations(ctx.model, ctx.job, replace_unchecked(base, recompute_modules=m))
                             and estimate_memory(ctx.model, small.cluster, ctx.job,
                                                 replace_unchecked(base, recompute_modules=m),
                                                 runtime=ctx.runtime).fits), None)
                got = _least_modules(small, base, NO_MARGIN)
                assert (got.plan.recompute_modules if got else None) == scan, (plan.describe(), cap)
                found += got is not None
    assert found


def test_the_least_recompute_that_fits_is_the_first_of_the_ladder_that_fits() -> None:
    """``resolve._least_fitting`` guesses the recompute depth by interpolation before bisecting: against
    capacities that put the answer anywhere along the ladder, the index it returns is the first that fits in
    a plain scan."""
    ctx = SCENARIOS["llama3-70b-h100-8-memory-tight"].ctx
    plans = [p for p in enumerate_plans(ctx) if p.vpp == 1 and max(p.virtual_stage_layers(ctx.model)) >= 6]
    checked = 0
    for plan in random.Random(3).sample(plans, min(4, len(plans))):
        ladder = recompute_ladder(ctx, replace_unchecked(plan, sharding="distopt"))
        steps = list(ladder)
        assert len(steps) == len(ladder) and steps[-1] is ladder[-1] and steps[0].recompute == "none"
        peaks = [estimate_memory(ctx.model, ctx.cluster, ctx.job, p, runtime=ctx.runtime).peak_bytes for p in steps]
        for target in sorted({2, len(ladder) // 3, len(ladder) // 2, len(ladder) - 2}):
            cap = int((peaks[target] + peaks[target - 1]) / 2)  # between the two: the first fit is at ``target``
            small = dc_replace(ctx, cluster=dc_replace(ctx.cluster, gpu=dc_replace(ctx.cluster.gpu, memory_bytes=cap)))
            scan = next(i for i, p in enumerate(steps)
                        if estimate_memory(small.model, small.cluster, small.job, p, runtime=small.runtime).fits_device)
            last = estimate_memory(small.model, small.cluster, small.job, ladder[-1], runtime=small.runtime)
            index, _ = _least_fitting(small, ladder, last, [None], NO_MARGIN)
            assert index == scan, (plan.describe(), target)
            checked += 1
    assert checked >= 8


def test_a_spent_budget_marks_the_search_truncated() -> None:
    ctx = ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096)
    cut = search(ctx, top_k=3, constants=CONSTANTS, work_budget=1)
    assert cut.truncated and cut.ranked and cut.as_dict()["truncated"] is True
    assert cut.as_dict()["budget_s"] is None and cut.as_dict()["work_budget"] == 1
    assert any("truncated" in n for n in cut.notes)
    timed = search(ctx, top_k=3, constants=CONSTANTS, time_budget_s=1e-9)
    assert timed.truncated and timed.ranked and timed.as_dict()["budget_s"] == 1e-9
    full = search(ctx, top_k=3, constants=CONSTANTS)
    assert not full.truncated and full.as_dict()["truncated"] is False
    assert full.ranked[0].step.step_s <= cut.ranked[0].step.step_s
    assert full.complete and not cut.complete and not timed.complete  # ("no plan fits" only from a complete search)


def test_wall_clock_budget_covers_enumeration_and_bounding() -> None:
    """The old search bounded every structure before looking at the clock (5 s budget: 29-98 s)."""
    ctx = ctx_for("deepseek-v3", "h800-ib", 2048, 4096, 4096)
    start = time.perf_counter()
    result = search(ctx, top_k=3, constants=CONSTANTS, time_budget_s=0.3)
    assert result.truncated and result.ranked
    assert time.perf_counter() - start < 15  # the budget plus one costing, on a loaded 2-core machine


def test_search_leaves_no_module_global_cache() -> None:
    ctx = ctx_for("llama3-8b", "dgx-h100", 64, 256, 4096)
    search(ctx, top_k=1, constants=CONSTANTS)
    assert SHAPE_CACHE.get() is None  # the shape cache lived and died with the search


def test_cli_prints_a_banner_when_the_search_was_cut_short() -> None:
    args = [sys.executable, "-m", "configurator.cli", "plan", "--model", "mixtral-8x7b", "--cluster", "dgx-h100",
            "--num-gpus", "64", "--seq-len", "4096", "--global-batch", "256", "--time-budget", "0.000001"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "TRUNCATED" in proc.stdout
    proc = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    out = json.loads(proc.stdout)
    assert out["search"]["truncated"] is True and out["search"]["budget_s"] == 0.000001


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


CONTENDED = ["llama3-8b-h100-8", "mixtral-8x7b-h100-64", "qwen3-30b-a3b-gb200-8-fp8"]


def test_default_budget_gives_the_golden_top_plans_under_cpu_contention() -> None:
    """Two spinning processes per core: the default (work-count) budget must not cut these short."""
    from configurator.bench import run_scenario

    hogs = [multiprocessing.get_context("fork").Process(target=_spin, args=(time.time() + 300,), daemon=True)
            for _ in range(2 * (os.cpu_count() or 2))]
    for h in hogs:
        h.start()
    try:
        for name in CONTENDED:
            result = run_scenario(SCENARIOS[name], CONSTANTS)
            assert result["search"]["truncated"] is False, name
            best, golden = result["best"]["plan"], GOLDEN[name]["best"]["plan"]
            assert {k: best[k] or None for k in golden} == {k: golden[k] or None for k in golden}, name
    finally:
        for h in hogs:
            h.kill()


def test_pipeline_sends_on_megatrons_order_are_worked_out_without_the_pipelines() -> None:
    """``p2p_stage_s`` on a homogeneous cluster in Megatron's order is arithmetic (it used to walk every
    pipeline: O(GPUs) per costed plan); it must give what the per-pipeline walk gives, NVL72 domains and
    pipeline degrees that do not divide them included."""
    import itertools

    import numpy as np

    from configurator.cost.comm import CommModel, LinkEfficiency

    checked = 0
    for name, gpus in (("dgx-h100", 64), ("gb200-nvl72", 288), ("gb200-nvl72", 64)):
        cluster = load_cluster(name, num_gpus=gpus)
        for tp, cp, pp in itertools.product([1, 2, 4, 8], [1, 2, 4], [2, 3, 4, 6, 8, 9, 16]):
            if gpus % (tp * cp * pp):
                continue
            plan = replace_unchecked(Plan(), tp=tp, cp=cp, pp=pp, dp=gpus // (tp * cp * pp))
            fast = CommModel(cluster, plan, None, LinkEfficiency(nvlink=1.0, scale_out=1.0))
            walk = CommModel(cluster, plan, None, LinkEfficiency(nvlink=1.0, scale_out=1.0))
            walk.placement, walk._gpu = "walk", np.arange(gpus)  # type: ignore[assignment]  # the per-pipeline path
            for stage in range(pp):
                assert fast.p2p_stage_s(stage, 1e6) == walk.p2p_stage_s(stage, 1e6), (name, tp, cp, pp, stage)
                checked += 1
    assert checked > 100


def test_group_shapes_tallied_for_all_rows_at_once_match_a_row_by_row_count() -> None:
    """``CommModel.shapes`` counts each group's GPUs per NVLink domain for every sampled row at once (numpy
    per row was a tenth of a DeepSeek-V3 search); the (GPUs per domain, domains) it finds must be what
    counting row by row finds, in the same order."""
    import itertools
    from collections import Counter

    import numpy as np

    from configurator.cost.comm import SAMPLED_GROUPS, CommModel, LinkEfficiency
    from configurator.placement import groups

    checked = 0
    for name, gpus in (("dgx-h100", 4096), ("gb200-nvl72", 288)):
        cluster = load_cluster(name, num_gpus=gpus)
        for tp, cp, pp, ep in itertools.product([1, 2, 8], [1, 4], [1, 3, 8], [1, 8]):
            dp = gpus // (tp * cp * pp)
            if gpus % (tp * cp * pp) or (tp * cp * dp) % ep:
                continue
            plan = replace_unchecked(Plan(), tp=tp, cp=cp, pp=pp, dp=dp, ep=ep)
            for kind in ("tp", "cp", "dp_cp", "pp", "ep", "edp"):
                comm = CommModel(cluster, plan, None, LinkEfficiency(nvlink=1.0, scale_out=1.0))
                rows = groups(plan, kind)
                if len(rows) > SAMPLED_GROUPS:
                    rows = rows[np.unique(np.linspace(0, len(rows) - 1, SAMPLED_GROUPS).astype(int))]
                by_row = [(max(Counter(r).values()), len(set(r))) for r in (rows // comm.domain_size).tolist()]
                assert [(s.per_domain, s.domains) for s in comm.shapes(kind)] == list(dict.fromkeys(by_row))
                checked += 1
    assert checked > 50


def test_an_offloaded_estimate_derived_from_the_offload_free_one_equals_a_fresh_estimate() -> None:
    from configurator.memory import with_offload

    ctx = ctx_for("mixtral-8x7b", "dgx-h100", 64, 256, 4096)
    rnd = random.Random(5)
    for plan in rnd.sample(list(enumerate_plans(ctx)), 40):
        for sharding, recompute in (("distopt", "none"), ("zero2", "selective"), ("zero3", "full")):
            base_plan = replace_unchecked(plan, sharding=sharding, recompute=recompute)
            base = estimate_memory(ctx.model, ctx.cluster, ctx.job, base_plan, runtime=ctx.runtime)
            for fraction in (0.01, 0.5, 0.93, 1.0):
                offloaded = replace_unchecked(base_plan, offload=fraction)
                # Equal to the last bit (dataclass equality compares every float), host memory included.
                assert with_offload(base, offloaded, ctx.cluster, runtime=ctx.runtime) == \
                    estimate_memory(ctx.model, ctx.cluster, ctx.job, offloaded, runtime=ctx.runtime)


@pytest.mark.parametrize("name", ["mixtral-8x7b-h100-64", "deepseek-v3-h800-2048-fp8"])
def test_activation_memory_does_not_depend_on_the_expert_parallel_degree(name: str) -> None:
    """``memory.ACTIVATION_MEMO`` leaves EP out of its key (structures that differ only in EP share their
    activations): estimated without the memo, two such structures keep the same activation bytes and in-flight
    micro-batches on every stage, under each recompute form the search asks for."""
    ctx = SCENARIOS[name].ctx
    by_rest: dict[tuple, list[Plan]] = {}
    for plan in enumerate_plans(ctx):
        by_rest.setdefault((plan.tp, plan.cp, plan.pp, plan.vpp, plan.etp, plan.micro_batch, plan.pipeline_layers),
                           []).append(plan)
    groups = [g for g in by_rest.values() if len({p.ep for p in g}) > 1]
    assert groups
    modules = selective_module_ladder(ctx.model, ctx.job.precision)[-1]
    checked = 0
    for group in random.Random(6).sample(groups, min(6, len(groups))):
        for form in ({"recompute": "none"}, {"recompute": "full", "recompute_num_layers": 1},
                     {"recompute": "selective", "recompute_modules": modules}):
            seen = {}
            for plan in group:
                mem = estimate_memory(ctx.model, ctx.cluster, ctx.job, replace_unchecked(plan, **form),
                                      runtime=ctx.runtime)
                seen[plan.ep] = [(s.activations_bytes, s.inflight_microbatches) for s in mem.stages]
            assert len({repr(v) for v in seen.values()}) == 1, (group[0].describe(), form, sorted(seen))
            checked += 1
    assert checked >= 6


def test_hsdp_never_needs_less_memory_than_zero3() -> None:
    """``needs_full_recompute`` skips HSDP once ZeRO-3 does not fit: HSDP shards weights and gradients over a
    part of the dp x cp group (and of the experts' data-parallel group), ZeRO-3 over all of it, with the same
    gathered working set, so no stage of the HSDP form holds less, whatever the recompute and offload."""
    from configurator.search.space import hsdp_shard_group

    ctx = SCENARIOS["deepseek-v3-h800-2048-fp8"].ctx
    plans = [p for p in enumerate_plans(ctx) if hsdp_shard_group(ctx, p)]
    assert plans
    for plan in random.Random(7).sample(plans, min(12, len(plans))):
        for form in ({"recompute": "full", "recompute_num_layers": 1, "offload": 1.0},
                     {"recompute": "selective", "offload": 0.0}):
            zero3 = estimate_memory(ctx.model, ctx.cluster, ctx.job,
                                    replace_unchecked(plan, sharding="zero3", **form), runtime=ctx.runtime)
            hsdp = estimate_memory(ctx.model, ctx.cluster, ctx.job, replace_unchecked(
                plan, sharding="hsdp", shard_group=hsdp_shard_group(ctx, plan), **form), runtime=ctx.runtime)
            assert all(h.total_bytes >= z.total_bytes for h, z in zip(hsdp.stages, zero3.stages)), plan.describe()
            assert any(h.total_bytes > z.total_bytes for h, z in zip(hsdp.stages, zero3.stages)), plan.describe()
