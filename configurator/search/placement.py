"""Link-aware placement: which physical node takes which job slot, on a cluster whose links differ.

Ranks fill job slots in Megatron's order (slot = rank // GPUs per node). A plan's traffic between
slots is a set of directed slot edges, each with the bytes one step sends over it
(``slot_traffic``): pipeline transfers between consecutive stages, neighbours of the data-parallel,
context-parallel and tensor-parallel rings, all pairs of an expert-parallel group — whichever of them
leave a node. Putting slot a on node i and slot b on node j costs ``bytes / bw(i, j)`` instead of
``bytes / bw_best``; the placement minimises the sum of these excess times,

    min  sum_e  w_e * C[pi(a_e), pi(b_e)],   C[i, j] = 1/bw(i, j) - 1/bw_best   (quadratic assignment)

* up to ``ILP_MAX_NODES`` nodes exactly, as a mixed-integer program with PuLP/CBC (``solve_ilp``:
  binaries x[s, n] for slot s on node n, and the Adams-Johnson linearisation of the products);
  ``tests/test_placement.py`` checks it against brute force;
* above that, by seeded pairwise-swap local search on the same objective from the default order and
  from a greedy start (deterministic for a seed).

The chosen placement is then re-costed with the full step-time model and kept only if it beats
Megatron's default order there too (``optimize._with_placement``). GPUs inside a node keep their order:
profiles do not measure intra-node pairs yet.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from configurator.cost.constants import CostConstants, grad_wire_bytes
from configurator.cost.step import prepare
from configurator.placement import Placement, groups
from configurator.search.space import SearchContext
from configurator.specs.hardware import ClusterSpec
from configurator.specs.plan import Plan

ILP_MAX_NODES = 12
ILP_TIME_LIMIT_S = 10.0
"""CBC's limit; past it the best incumbent is used (and compared with the default order)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotTraffic:
    """Directed slot pairs (a, b) and the bytes a step sends from slot a to slot b."""

    src: np.ndarray
    dst: np.ndarray
    bytes_per_step: np.ndarray


def slot_traffic(ctx: SearchContext, plan: Plan) -> SlotTraffic:
    g = ctx.cluster.gpus_per_node
    inputs = prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
    m = inputs.num_microbatches
    edges: dict[tuple[int, int], float] = {}

    def add(a: int, b: int, num_bytes: float) -> None:
        if a != b and num_bytes > 0:
            edges[(a, b)] = edges.get((a, b), 0.0) + num_bytes

    def ring(kind: str, num_bytes: float) -> None:
        for row in (groups(plan, kind) // g).tolist():
            n = len(row)
            for i in range(n):
                add(row[i], row[(i + 1) % n], num_bytes)

    # Pipeline: every micro-batch crosses each boundary forward and back (per pipeline line).
    for row in (groups(plan, "pp") // g).tolist():
        for s in range(plan.pp - 1 if plan.vpp == 1 else plan.pp):
            a, b = row[s], row[(s + 1) % plan.pp]
            add(a, b, inputs.p2p_bytes * m * plan.vpp)
            add(b, a, inputs.p2p_bytes * m * plan.vpp)
    # Data parallel: reduce-scatter + all-gather of the stage's gradients/parameters around the ring.
    dense, expert = max(inputs.rank_params, key=lambda p: p[0] + p[1])
    group = plan.dp * plan.cp
    if group > 1:
        ring("dp_cp", 2 * (dense * grad_wire_bytes(inputs.runtime, plan.sharding) + dense * 2) / group)
    layers = max(sum(st.num_layers for st in inputs.stages[r::plan.pp]) for r in range(plan.pp))
    works = [w for st in inputs.stages for w, _, _ in st.works]
    if plan.cp > 1:
        cp_bytes = max((w.cp_bytes for w in works), default=0.0)
        ring("cp", 3 * cp_bytes * layers * m)
    if plan.tp > 1:
        tp_bytes = max((w.tp_bytes for w in works), default=0.0)
        ring("tp", 8 * tp_bytes * layers * m / plan.tp)
    if plan.ep > 1:
        ep_bytes = max((w.ep_bytes for w in works), default=0.0)
        for row in (groups(plan, "ep") // g).tolist():
            for a, b in itertools.permutations(row, 2):
                add(a, b, 4 * ep_bytes * layers * m / plan.ep)
    keys = list(edges)
    return SlotTraffic(src=np.array([a for a, _ in keys], dtype=int), dst=np.array([b for _, b in keys], dtype=int),
                       bytes_per_step=np.array([edges[k] for k in keys]))


def penalty_matrix(cluster: ClusterSpec) -> np.ndarray:
    """C[i, j] = 1/bw(i, j) - 1/bw_best over the scale-out links (0 on the diagonal)."""
    n = cluster.num_nodes
    bw = np.full((n, n), cluster.scale_out_link.bandwidth_Bps)
    if cluster.node_links is not None:
        for i, row in enumerate(cluster.node_links):
            for j, link in enumerate(row):
                if link is not None:
                    bw[i, j] = link.bandwidth_Bps
    best = bw[~np.eye(n, dtype=bool)].max() if n > 1 else 1.0
    c = 1.0 / bw - 1.0 / best
    np.fill_diagonal(c, 0.0)
    return np.maximum(c, 0.0)


def objective(order: np.ndarray, traffic: SlotTraffic, penalty: np.ndarray) -> float:
    """Excess seconds of a slot -> node assignment (``order[slot] = node``)."""
    return float(np.sum(traffic.bytes_per_step * penalty[order[traffic.src], order[traffic.dst]]))


def brute_force(traffic: SlotTraffic, penalty: np.ndarray) -> tuple[np.ndarray, float]:
    """The exact optimum by trying every assignment (for tests; n! grows fast)."""
    n = penalty.shape[0]
    best, best_cost = np.arange(n), objective(np.arange(n), traffic, penalty)
    for perm in itertools.permutations(range(n)):
        order = np.array(perm)
        cost = objective(order, traffic, penalty)
        if cost < best_cost - 1e-15:
            best, best_cost = order, cost
    return best, best_cost


def solve_ilp(traffic: SlotTraffic, penalty: np.ndarray, time_limit_s: float | None = ILP_TIME_LIMIT_S) -> np.ndarray:
    """Exact quadratic assignment as a mixed-integer program (the Adams-Johnson linearisation).

    x[s, i] = 1 when slot s sits on node i; for each traffic edge e = (a, b), y[e, i, j] >= 0 is the share
    of e on node pair (i, j), tied to x by ``sum_j y[e, i, j] = x[a, i]`` and ``sum_i y[e, i, j] = x[b, j]``
    (so y[e, i, j] = x[a, i] * x[b, j] at integral x). The objective ``sum w_e C[i, j] y[e, i, j]`` is then
    exact, and the linear relaxation is much tighter than big-M products, which lets CBC prove optimality
    quickly at these sizes. ``time_limit_s=None``: no limit, CBC runs until it proves optimality (the
    answer then does not depend on how busy the machine is).
    """
    import pulp

    n = penalty.shape[0]
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    x = {(s, i): prob.add_variable(f"x_{s}_{i}", cat="Binary") for s in range(n) for i in range(n)}
    scale = float(penalty.max()) or 1.0
    objective_terms = []
    for e, (a, b, w) in enumerate(zip(traffic.src.tolist(), traffic.dst.tolist(), traffic.bytes_per_step.tolist())):
        y = {(i, j): prob.add_variable(f"y_{e}_{i}_{j}", lowBound=0) for i in range(n) for j in range(n) if i != j}
        for i in range(n):
            prob += pulp.lpSum(y[i, j] for j in range(n) if j != i) == x[a, i]
            prob += pulp.lpSum(y[j, i] for j in range(n) if j != i) == x[b, i]
        objective_terms += [float(w * penalty[i, j] / scale) * v for (i, j), v in y.items() if penalty[i, j] > 0]
    prob += pulp.lpSum(objective_terms)
    for s in range(n):
        prob += pulp.lpSum(x[s, i] for i in range(n)) == 1
        prob += pulp.lpSum(x[i, s] for i in range(n)) == 1
    with warnings.catch_warnings():
        # PuLP 3 warns that its bundled CBC moves to the pulp[cbc] extra in PuLP 4 (pinned below 4).
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
    order = np.zeros(n, dtype=int)
    for s in range(n):
        order[s] = max(range(n), key=lambda i: pulp.value(x[s, i]) or 0.0)
    if sorted(order.tolist()) != list(range(n)):  # no integral incumbent: keep the default order
        return np.arange(n)
    return order


def local_search(traffic: SlotTraffic, penalty: np.ndarray, start: np.ndarray, *, seed: int = 0,
                 max_passes: int = 50) -> np.ndarray:
    """First-improvement pairwise swaps until no swap helps (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    order = start.copy()
    cost = objective(order, traffic, penalty)
    n = len(order)
    for _ in range(max_passes):
        improved = False
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
        rng.shuffle(pairs)
        for a, b in pairs:
            order[a], order[b] = order[b], order[a]
            new = objective(order, traffic, penalty)
            if new < cost - 1e-15:
                cost, improved = new, True
            else:
                order[a], order[b] = order[b], order[a]
        if not improved:
            break
    return order


def greedy_start(traffic: SlotTraffic, penalty: np.ndarray) -> np.ndarray:
    """Slots in order of traffic take the node with the least penalty to the nodes already placed."""
    n = penalty.shape[0]
    order = -np.ones(n, dtype=int)
    free = set(range(n))
    heavy = np.zeros(n)
    np.add.at(heavy, traffic.src, traffic.bytes_per_step)
    for slot in np.argsort(-heavy, kind="stable"):
        def cost(node: int) -> float:
            total = 0.0
            for a, b, w in zip(traffic.src, traffic.dst, traffic.bytes_per_step):
                if a == slot and order[b] >= 0:
                    total += w * penalty[node, order[b]]
                if b == slot and order[a] >= 0:
                    total += w * penalty[order[a], node]
            return total
        node = min(sorted(free), key=cost)
        order[slot] = node
        free.discard(node)
    return order


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementResult:
    placement: Placement
    method: str
    excess_s: float
    """Objective of the chosen placement (excess transfer seconds per step)."""
    default_excess_s: float


def place(ctx: SearchContext, plan: Plan, *, seed: int = 0) -> PlacementResult:
    traffic = slot_traffic(ctx, plan)
    penalty = penalty_matrix(ctx.cluster)
    n = ctx.cluster.num_nodes
    default = np.arange(n)
    base = objective(default, traffic, penalty)
    if not penalty.any() or len(traffic.src) == 0:
        return PlacementResult(placement=Placement.default(ctx.cluster), method="default (uniform links)",
                               excess_s=base, default_excess_s=base)
    if n <= ILP_MAX_NODES:
        order, method = solve_ilp(traffic, penalty), "ILP (PuLP/CBC), exact"
    else:
        candidates = [local_search(traffic, penalty, default, seed=seed),
                      local_search(traffic, penalty, greedy_start(traffic, penalty), seed=seed + 1)]
        order = min(candidates, key=lambda o: objective(o, traffic, penalty))
        method = "local search (pairwise swaps from the default and a greedy start)"
    cost = objective(order, traffic, penalty)
    if cost >= base:
        order, cost = default, base
    return PlacementResult(placement=Placement(node_order=tuple(int(v) for v in order)), method=method,
                           excess_s=cost, default_excess_s=base)


def optimize_placement(ctx: SearchContext, plan: Plan, constants: CostConstants | None = None,
                       seed: int = 0) -> Placement | None:
    """A better-than-default placement for ``plan`` by the objective, or None if the default is best."""
    result = place(ctx, plan, seed=seed)
    if result.excess_s >= result.default_excess_s or math.isclose(result.excess_s, result.default_excess_s):
        return None
    return result.placement


__all__ = ["ILP_MAX_NODES", "PlacementResult", "SlotTraffic", "brute_force", "local_search", "objective",
           "optimize_placement", "penalty_matrix", "place", "slot_traffic", "solve_ilp"]
