"""Placement: the ILP is exact (brute force agrees), local search helps, the step model confirms it."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from configurator import JobSpec, Plan, load_cluster, load_model
from configurator.cost import CostConstants, evaluate, prepare
from configurator.search.optimize import search
from configurator.search.placement import (SlotTraffic, brute_force, local_search, objective, penalty_matrix, place,
                                           slot_traffic, solve_ilp)
from configurator.search.space import SearchContext
from configurator.specs.hardware import LinkSpec

CONSTANTS = CostConstants.defaults()


def measured(nodes: int, slow_fraction: float, factor: float, seed: int):  # type: ignore[no-untyped-def]
    base = load_cluster("dgx-h100", nodes=nodes)
    so = base.scale_out_link
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(nodes) for b in range(a + 1, nodes)]
    slow = set(rng.sample(pairs, max(1, int(round(slow_fraction * len(pairs))))))
    links = tuple(tuple(None if a == b else LinkSpec(
        bandwidth_Bps=so.bandwidth_Bps * (factor if (min(a, b), max(a, b)) in slow else 1.0), latency_s=so.latency_s)
        for b in range(nodes)) for a in range(nodes))
    return replace(base, node_links=links)


@pytest.mark.parametrize(("n", "seed"), [(4, 0), (6, 1), (7, 2), (8, 3)])
def test_ilp_matches_brute_force(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    penalty = rng.choice([0.0, 0.0, 1.0, 3.0], size=(n, n))
    np.fill_diagonal(penalty, 0.0)
    edges = [(a, b) for a in range(n) for b in range(n) if a != b and rng.random() < 0.4]
    traffic = SlotTraffic(src=np.array([a for a, _ in edges]), dst=np.array([b for _, b in edges]),
                          bytes_per_step=rng.uniform(1, 10, size=len(edges)))
    _, exact = brute_force(traffic, penalty)
    # No time limit: CBC proves optimality (a wall-clock limit made the answer depend on the machine's load).
    ilp = objective(solve_ilp(traffic, penalty, time_limit_s=None), traffic, penalty)
    assert ilp == pytest.approx(exact, rel=1e-6, abs=1e-9)
    ls = objective(local_search(traffic, penalty, np.arange(n), seed=seed), traffic, penalty)
    assert exact <= ls <= objective(np.arange(n), traffic, penalty) + 1e-12


def test_pipeline_avoids_slow_links_on_a_small_cluster() -> None:
    cluster = measured(4, 0.5, 0.1, seed=5)
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=cluster, job=JobSpec(global_batch=32, seq_len=4096))
    plan = Plan(tp=8, pp=4, dp=1, sp=True)
    result = place(ctx, plan)
    assert result.method.startswith("ILP")
    assert result.excess_s <= result.default_excess_s
    default = evaluate(prepare(ctx.model, cluster, ctx.job, plan), CONSTANTS).step_s
    placed = evaluate(prepare(ctx.model, cluster, ctx.job, plan, result.placement), CONSTANTS).step_s
    assert placed <= default


def test_large_cluster_placement_beats_megatron_order() -> None:
    cluster = measured(64, 0.10, 0.25, seed=7)
    ctx = SearchContext(model=load_model("llama3-70b"), cluster=cluster, job=JobSpec(global_batch=512, seq_len=8192))
    plan = Plan(tp=8, pp=8, vpp=5, dp=8, sp=True, recompute="full")
    result = place(ctx, plan)
    assert result.method.startswith("local search")
    assert sorted(result.placement.node_order) == list(range(64))
    default = evaluate(prepare(ctx.model, cluster, ctx.job, plan), CONSTANTS).step_s
    placed = evaluate(prepare(ctx.model, cluster, ctx.job, plan, result.placement), CONSTANTS).step_s
    assert placed < default


def test_uniform_links_keep_the_default_order() -> None:
    cluster = measured(4, 0.0, 1.0, seed=0)
    cluster = replace(cluster, node_links=tuple(tuple(None if a == b else cluster.scale_out_link for b in range(4))
                                                for a in range(4)))
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=cluster, job=JobSpec(global_batch=32, seq_len=4096))
    result = place(ctx, Plan(tp=8, pp=4, dp=1, sp=True))
    assert result.placement.node_order == (0, 1, 2, 3) and not penalty_matrix(cluster).any()


def test_traffic_counts_pipeline_and_data_parallel_edges() -> None:
    cluster = measured(4, 0.25, 0.5, seed=1)
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=cluster, job=JobSpec(global_batch=32, seq_len=4096))
    traffic = slot_traffic(ctx, Plan(tp=8, pp=2, dp=2, sp=True))
    pairs = set(zip(traffic.src.tolist(), traffic.dst.tolist()))
    # slots 0,1 = stage 0 (dp 0, 1); slots 2,3 = stage 1: pipeline 0<->2, 1<->3; data parallel 0<->1, 2<->3.
    assert {(0, 2), (2, 0), (1, 3), (3, 1), (0, 1), (1, 0), (2, 3), (3, 2)} <= pairs


def test_search_applies_placement_on_a_measured_cluster() -> None:
    cluster = measured(8, 0.3, 0.1, seed=11)
    ctx = SearchContext(model=load_model("llama3-8b"), cluster=cluster, job=JobSpec(global_batch=64, seq_len=4096))
    result = search(ctx, top_k=2, constants=CONSTANTS)
    best = result.ranked[0]
    if best.placement is not None:
        assert best.default_placement_step_s is not None
        assert best.step.step_s < best.default_placement_step_s
