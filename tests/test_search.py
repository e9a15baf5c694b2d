"""The plan search: legal, fitting answers; branch and bound equals brute force; offload; reasons."""

from __future__ import annotations

import functools

import pytest

from configurator import JobSpec, load_cluster, load_model, plan_violations
from configurator.cost import CostConstants, evaluate, prepare
from configurator.search.optimize import SearchResult, search
from configurator.search.resolve import min_offload, resolve
from configurator.search.space import AXES, SearchContext, SpaceStats, enumerate_plans

CONSTANTS = CostConstants.defaults()


def ctx_for(model: str, cluster: str, gpus: int, gbs: int, seq: int) -> SearchContext:
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=gbs, seq_len=seq))


def test_space_is_data_and_every_structure_is_legal() -> None:
    ctx = ctx_for("llama3-8b", "dgx-h100", 16, 64, 4096)
    stats = SpaceStats()
    plans = list(enumerate_plans(ctx, stats))
    assert [a.name for a in AXES] == ["tp", "cp", "pp", "vpp", "ep", "etp", "micro_batch"]
    assert plans and stats.legal == len(plans) and stats.generated >= len(plans)
    for plan in plans:
        assert not plan_violations(ctx.model, ctx.job, plan, 16)
        assert plan.sp == (plan.tp > 1) and plan.world_size == 16
    assert any("NVLink domain" in r for r in stats.pruned)  # tp=16 is beyond a DGX node
    assert sum(stats.pruned.values()) > 0


def test_branch_and_bound_finds_the_brute_force_optimum() -> None:
    ctx = ctx_for("llama3-8b", "dgx-h100", 16, 64, 4096)
    result = search(ctx, top_k=3, constants=CONSTANTS, method="exhaustive")
    everything = []
    for plan in enumerate_plans(ctx):
        for option in resolve(ctx, plan).options:
            step = evaluate(prepare(ctx.model, ctx.cluster, ctx.job, option.plan), CONSTANTS)
            everything.append(step.step_s)
    everything.sort()
    assert [round(e.step.step_s, 9) for e in result.ranked] == [round(s, 9) for s in everything[:3]]
    assert result.evaluated < len(everything)  # the bound skipped most of the space
    assert result.method == "exhaustive"


def test_best_plan_fits_and_beats_the_rest() -> None:
    ctx = ctx_for("llama3-70b", "dgx-h100", 64, 256, 8192)
    result = search(ctx, top_k=5, constants=CONSTANTS)
    assert len(result.ranked) == 5
    steps = [e.step.step_s for e in result.ranked]
    assert steps == sorted(steps)
    for e in result.ranked:
        assert e.memory.fits and not plan_violations(ctx.model, ctx.job, e.plan, 64)
        assert e.why
    d = result.as_dict()
    assert {"candidates", "feasible", "evaluated", "seconds", "method"} <= set(d)


def test_offload_is_chosen_when_nothing_else_fits() -> None:
    ctx = ctx_for("llama3-70b", "dgx-h100", 8, 32, 4096)
    result = search(ctx, top_k=1, constants=CONSTANTS)
    best = result.ranked[0]
    assert 0 < best.plan.offload <= 1
    assert best.memory.fits and best.memory.host_peak_bytes <= best.memory.host_capacity_bytes
    # The fraction is the smallest that fits (1% steps) for that plan, or the GPU/CPU balance point.
    smaller = min_offload(ctx, best.plan)
    assert smaller is not None and smaller[0] <= best.plan.offload


def test_nothing_fits_reports_the_smallest_need() -> None:
    ctx = ctx_for("llama3-405b", "dgx-h100", 8, 16, 8192)
    result = search(ctx, top_k=3, constants=CONSTANTS)
    assert result.ranked == ()
    assert result.smallest_need_bytes > ctx.cluster.gpu_memory_bytes
    assert any("nothing fits memory" in r for r, _ in result.pruned)


@functools.cache
def moe_exhaustive(model: str) -> SearchResult:
    """The exhaustive top 5 of ``model`` on 16 H100 (global batch 64, seq 4096), searched once per module: two
    tests read it (a MoE search on 16 GPUs takes several seconds)."""
    return search(ctx_for(model, "dgx-h100", 16, 64, 4096), top_k=5, method="exhaustive", constants=CONSTANTS)


def test_optuna_is_deterministic_for_a_seed() -> None:
    # 2,379 structures, 20 trials (fewer than the ~34 after which the warm start proves the optimum: ~60 before the
    # end-of-step bound took the backward and forward windows apart)
    ctx = ctx_for("mixtral-8x7b", "dgx-h100", 16, 64, 4096)
    a = search(ctx, top_k=2, method="optuna", seed=3, time_budget_s=120.0, max_trials=20, constants=CONSTANTS)
    b = search(ctx, top_k=2, method="optuna", seed=3, time_budget_s=120.0, max_trials=20, constants=CONSTANTS)
    assert a.method == "optuna" and "trial cap" in a.notes[0]
    assert [e.plan for e in a.ranked] == [e.plan for e in b.ranked]
    exhaustive = moe_exhaustive("mixtral-8x7b")
    assert a.ranked[0].step.step_s >= exhaustive.ranked[0].step.step_s * (1 - 1e-9)


def test_optuna_that_bounds_out_the_whole_space_stops_with_the_exhaustive_best() -> None:
    """The warm start takes structures best-first as branch and bound does; once the front's bound reaches the
    k-th best, no structure can enter the top k, so the study ends there with the exhaustive top k."""
    ctx = ctx_for("llama3-8b", "dgx-h100", 16, 64, 4096)
    optuna_result = search(ctx, top_k=3, method="optuna", constants=CONSTANTS)
    exhaustive = search(ctx, top_k=3, method="exhaustive", constants=CONSTANTS)
    assert "proof" in optuna_result.notes[0] and "trial cap" not in optuna_result.notes[0]
    assert [round(e.step.step_s, 9) for e in optuna_result.ranked] == [round(e.step.step_s, 9) for e in exhaustive.ranked]
    assert int(optuna_result.notes[0].split(" trials")[0].rsplit(" ", 1)[1]) < 1500  # before the trial cap


@pytest.mark.parametrize("model", ["mixtral-8x7b", "qwen3-30b-a3b"])
def test_moe_search_considers_expert_parallelism(model: str) -> None:
    ctx = ctx_for(model, "dgx-h100", 16, 64, 4096)
    plans = list(enumerate_plans(ctx))
    assert any(p.ep > 1 for p in plans) and any(p.etp > 1 for p in plans)
    result = moe_exhaustive(model)
    assert result.ranked and result.method == "exhaustive"


def test_parallel_optuna_workers_are_deterministic_for_a_seed(tmp_path) -> None:
    import optuna

    ctx = ctx_for("mixtral-8x7b", "dgx-h100", 16, 64, 4096)  # 2,379 structures, 2 x 20 trials
    runs = []
    for name in ("a", "b"):
        storage = f"sqlite:///{tmp_path / (name + '.db')}"
        result = search(ctx, top_k=2, method="optuna", workers=2, storage=storage, max_trials=40, constants=CONSTANTS)
        assert result.method.startswith("optuna (2 workers") and result.ranked and not result.truncated
        studies = optuna.study.get_all_study_summaries(storage)
        assert sorted(s.n_trials for s in studies) == [20, 20]  # one study per process, in the RDB storage
        assert all(e.memory.fits for e in result.ranked)
        runs.append([(e.plan, e.step.step_s) for e in result.ranked])
    assert runs[0] == runs[1]
