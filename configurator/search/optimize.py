"""The search: every legal structure, memory-resolved, costed best-first; Optuna where the space is large.

Exhaustive (branch and bound): each structure's fitting options (``resolve.py``) get a cheap lower
bound of their step time (``busy_lower_bound``: the busiest rank's own work plus the pipeline fill and
drain, exact for equal stages); options are costed in order of that bound, and costing stops once the
bound exceeds the k-th best step found — nothing skipped can beat what was kept. The answer is the
exhaustive optimum of the model, found without costing most of the space.

Optuna (TPE, seeded): where the space has more structures than ``EXHAUSTIVE_LIMIT``, the trials pick
one value per axis (by index into each axis's values) and are costed like above; illegal combinations
are pruned trials. Deterministic for a seed when the trial count, not the time budget, ends the study.
Where both can run, ``gap_to_exhaustive`` reports how far the search's best is from the exhaustive best.

Placement: on a cluster with a measured link matrix, the best plans get a link-aware placement
(``placement.py``) and are re-costed on it; on a homogeneous cluster Megatron's order is kept.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from configurator.cost.constants import CostConstants, load_calibration
from configurator.cost.step import StepReport, busy_lower_bound, evaluate, prepare
from configurator.search.knobs import best_knobs, knob_lower_bound
from configurator.memory import MemoryReport
from configurator.placement import Placement
from configurator.search.resolve import Option, resolve
from configurator.search.space import AXES, SearchContext, SpaceStats, enumerate_plans
from configurator.specs.plan import Plan

EXHAUSTIVE_LIMIT = 20000
"""Structures above which ``method='auto'`` switches from exhaustive branch and bound to Optuna."""
METHODS = ("auto", "exhaustive", "optuna")
DEFAULT_TRIALS = 1500
"""Optuna trials (illegal combinations are cheap, pruned trials); the time budget may end it first."""
Progress = Callable[[float, str], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluated:
    plan: Plan
    memory: MemoryReport
    step: StepReport
    why: str
    """How the memory choices (sharding, recompute, offload) were made."""
    placement: Placement | None = None
    """None: Megatron's default order."""
    default_placement_step_s: float | None = None
    """Step time on the default order, where a placement search ran."""
    tight: bool = False
    """Fits only without the memory margin (``search/resolve.py``): ranked after every plan with headroom."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchResult:
    ranked: tuple[Evaluated, ...]
    method: str
    candidates: int
    """Legal structures (degree + micro-batch combinations) in the space."""
    feasible: int
    """Structures with at least one option that fits memory."""
    options: int
    """Fitting (structure, sharding, recompute, offload) options."""
    evaluated: int
    """Options whose step time was computed."""
    seconds: float
    pruned: tuple[tuple[str, int], ...]
    """Why structures were dropped (illegal, or nothing fits), most frequent first."""
    smallest_need_bytes: float = 0.0
    """When nothing fits: the least memory any structure would need."""
    gap_to_exhaustive: float | None = None
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {"candidates": self.candidates, "feasible": self.feasible, "options": self.options,
                "evaluated": self.evaluated, "seconds": round(self.seconds, 3), "method": self.method,
                "pruned": [{"reason": r, "count": n} for r, n in self.pruned],
                "gap_to_exhaustive": self.gap_to_exhaustive, "notes": list(self.notes)}


class _TopK:
    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[tuple[int, float], int, Evaluated]] = []
        self.counter = itertools.count()

    def push(self, item: Evaluated) -> None:
        entry = ((-int(item.tight), -item.step.step_s), next(self.counter), item)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif entry[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, entry)

    @property
    def bound(self) -> float:
        """Step time a new option must beat to enter (inf until k are kept, or while a tight plan is kept:
        any plan with headroom enters before it)."""
        if len(self.heap) < self.k or self.heap[0][0][0]:
            return float("inf")
        return -self.heap[0][0][1]

    def ranked(self) -> list[Evaluated]:
        return [e for _, _, e in sorted(self.heap, key=lambda t: (-t[0][0], -t[0][1], t[1]))]


def _cost(ctx: SearchContext, option: Option, constants: CostConstants) -> Evaluated:
    inputs = prepare(ctx.model, ctx.cluster, ctx.job, option.plan, runtime=ctx.runtime)
    inputs, step = best_knobs(inputs, constants)  # communication knobs chosen per plan (search/knobs.py)
    return Evaluated(plan=inputs.plan, memory=option.memory, step=step, why=option.why, tight=option.tight)


def _key(plan: Plan) -> tuple:
    return (plan.tp, plan.cp, plan.pp, plan.vpp, plan.ep, plan.etp, plan.micro_batch)


def search(ctx: SearchContext, *, top_k: int = 5, time_budget_s: float | None = None, seed: int = 0,
           method: str = "auto", constants: CostConstants | None = None, max_trials: int = DEFAULT_TRIALS,
           progress: Progress | None = None, storage: str | None = None, workers: int = 1) -> SearchResult:
    """Best plans for ``ctx``, best first (``SearchResult.ranked`` is empty when nothing fits).

    ``storage`` (an Optuna RDB URL) keeps the Optuna study in a database; ``workers > 1`` runs that many
    processes on one shared study (Optuna's RDB storage coordinates them; without ``storage`` a temporary
    SQLite file is used), and their best plans are merged. Both imply the Optuna method.
    """
    constants = constants or load_calibration()
    start = time.perf_counter()
    stats = SpaceStats()
    structures = list(enumerate_plans(ctx, stats))
    chosen = method if method != "auto" else ("exhaustive" if len(structures) <= EXHAUSTIVE_LIMIT else "optuna")
    say = progress or (lambda _f, _m: None)
    infeasible: Counter[str] = Counter()
    smallest = [float("inf")]
    resolutions: dict[tuple, list[Option]] = {}
    feasible_elsewhere = 0

    def options_of(plan: Plan) -> list[Option]:
        key = _key(plan)
        if key not in resolutions:
            res = resolve(ctx, plan)
            if not res.options:
                infeasible["nothing fits memory even with full recompute and optimizer offload"] += 1
                if res.smallest_need_bytes:
                    smallest[0] = min(smallest[0], res.smallest_need_bytes)
            resolutions[key] = list(res.options)
        return resolutions[key]

    if storage is not None or workers > 1:
        chosen = "optuna"
    if chosen == "exhaustive":
        top, evaluated, notes = _exhaustive(ctx, structures, options_of, constants, top_k, time_budget_s, start, say)
    elif workers > 1:
        top, evaluated, notes, feasible_elsewhere = _optuna_parallel(ctx, constants, top_k, time_budget_s, seed,
                                                                     max_trials, storage, workers)
        chosen = f"optuna ({workers} workers, one shared study)"
    else:
        top, evaluated, notes = _optuna(ctx, structures, options_of, constants, top_k, time_budget_s, seed, start, say,
                                        max_trials, storage, _study_name(ctx, seed) if storage else None)
    feasible = sum(1 for opts in resolutions.values() if opts) + feasible_elsewhere
    if chosen == "exhaustive" and len(resolutions) < len(structures):
        notes.append(f"memory was resolved for {len(resolutions)} of {len(structures)} structures (the rest were "
                     "bounded out first), so 'feasible' counts those")
    ranked = [_with_placement(ctx, e, constants) for e in top.ranked()]
    ranked.sort(key=lambda e: (e.tight, e.step.step_s))
    pruned = Counter(stats.pruned) + infeasible
    return SearchResult(ranked=tuple(ranked), method=chosen, candidates=len(structures), feasible=feasible,
                        options=sum(len(o) for o in resolutions.values()), evaluated=evaluated,
                        seconds=time.perf_counter() - start, pruned=tuple(pruned.most_common()),
                        smallest_need_bytes=0.0 if smallest[0] == float("inf") else smallest[0],
                        notes=tuple(notes))


def _exhaustive(ctx: SearchContext, structures: list[Plan], options_of: Callable[[Plan], list[Option]],
                constants: CostConstants, top_k: int, budget: float | None, start: float,
                say: Progress) -> tuple[_TopK, int, list[str]]:
    """Best-first branch and bound over structures, then their memory options.

    A structure's optimistic bound uses its least-sharded, recompute-free, offload-free form: every
    fitting option of it adds sharding communication, recompute or offload time on top, so the bound
    holds for all of them. Structures are resolved (memory) and their options bounded only when they
    reach the front of the queue; the search stops when the front's bound reaches the k-th best step.
    """
    queue: list[tuple[float, int, int, object]] = []
    counter = itertools.count()
    n = len(structures)
    for i, plan in enumerate(structures):
        inputs = prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
        queue.append((knob_lower_bound(inputs, constants), next(counter), 0, plan))
        if i % 128 == 0:
            say(0.6 * i / max(n, 1), f"bounding {i}/{n} structures")
    heapq.heapify(queue)
    top = _TopK(top_k)
    evaluated = resolved = 0
    notes: list[str] = []
    while queue:
        lb, _, kind, item = queue[0]
        if lb >= top.bound:
            notes.append(f"branch and bound: {len(queue)} structures/options left unexplored, their lower bounds "
                         f"exceed the {top_k}-th best step ({top.bound:.3f} s); {resolved} of {n} structures "
                         "needed a memory resolution")
            break
        if budget is not None and time.perf_counter() - start > budget and top.heap:
            notes.append(f"time budget of {budget:g} s reached after {evaluated} evaluations: the ranking is "
                         "the best found, not proven optimal")
            break
        heapq.heappop(queue)
        if kind == 0:
            resolved += 1
            for option in options_of(item):  # type: ignore[arg-type]
                inputs = prepare(ctx.model, ctx.cluster, ctx.job, option.plan, runtime=ctx.runtime)
                heapq.heappush(queue, (max(lb, knob_lower_bound(inputs, constants)), next(counter), 1, option))
        else:
            top.push(_cost(ctx, item, constants))  # type: ignore[arg-type]
            evaluated += 1
            if evaluated % 8 == 0:
                say(0.6 + 0.4 * min(1.0, evaluated / 200), f"costing: {evaluated} evaluated")
    return top, evaluated, notes


def _optuna(ctx: SearchContext, structures: list[Plan], options_of: Callable[[Plan], list[Option]],
            constants: CostConstants, top_k: int, budget: float | None, seed: int, start: float,
            say: Progress, max_trials: int, storage: str | None = None,
            study_name: str | None = None) -> tuple[_TopK, int, list[str]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    legal = {_key(p): p for p in structures}
    names = ("tp", "cp", "pp", "vpp", "ep", "etp", "micro_batch")
    assert [a.name for a in AXES[:7]] == list(names)
    values = {name: sorted({k[i] for k in legal}) for i, name in enumerate(names)}
    top = _TopK(top_k)
    costed: dict[tuple, float] = {}
    evaluated = [0]
    remaining = budget if budget is not None else 8.0

    def objective(trial: optuna.Trial) -> float:
        key = tuple(values[name][trial.suggest_int(name, 0, len(values[name]) - 1)] for name in names)
        if key in costed:
            return costed[key]
        plan = legal.get(key)
        if plan is None:
            raise optuna.TrialPruned()
        best = float("inf")
        for option in options_of(plan):
            result = _cost(ctx, option, constants)
            evaluated[0] += 1
            top.push(result)
            best = min(best, result.step.step_s)
        costed[key] = best
        if best == float("inf"):
            raise optuna.TrialPruned()
        say(min(1.0, (time.perf_counter() - start) / remaining), f"optuna: {len(costed)} structures tried")
        return best

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=30)
    study = optuna.create_study(direction="minimize", sampler=sampler, storage=storage, study_name=study_name,
                                load_if_exists=storage is not None)
    elapsed = time.perf_counter() - start
    study.optimize(objective, n_trials=max_trials, timeout=max(0.5, remaining - elapsed), catch=())
    ended = "trial cap (deterministic for the seed)" if len(study.trials) >= max_trials else \
        "time budget (more time may find more)"
    notes = [f"optuna TPE (seed {seed}): {len(study.trials)} trials, {len(costed)} distinct structures costed "
             f"of {len(legal)}; ended by the {ended}"]
    return top, evaluated[0], notes


def _study_name(ctx: SearchContext, seed: int) -> str:
    import hashlib

    key = repr((ctx.model, ctx.cluster.name, ctx.cluster.num_nodes, ctx.cluster.gpus_per_node, ctx.job, ctx.runtime,
                ctx.framework, seed))
    return "configurator-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _optuna_worker(ctx: SearchContext, constants: CostConstants, top_k: int, budget: float | None, seed: int,
                   max_trials: int, storage: str, study_name: str) -> tuple[list[Evaluated], int, int]:
    """One process of a shared study: its own structure cache, the study's trials in the database."""
    structures = list(enumerate_plans(ctx))
    resolutions: dict[tuple, list[Option]] = {}

    def options_of(plan: Plan) -> list[Option]:
        key = _key(plan)
        if key not in resolutions:
            resolutions[key] = list(resolve(ctx, plan).options)
        return resolutions[key]

    top, evaluated, _ = _optuna(ctx, structures, options_of, constants, top_k, budget, seed, time.perf_counter(),
                                lambda _f, _m: None, max_trials, storage, study_name)
    return top.ranked(), evaluated, sum(1 for opts in resolutions.values() if opts)


def _optuna_parallel(ctx: SearchContext, constants: CostConstants, top_k: int, budget: float | None, seed: int,
                     max_trials: int, storage: str | None, workers: int) -> tuple[_TopK, int, list[str], int]:
    import multiprocessing
    import tempfile

    import optuna

    tmp = None
    if storage is None:
        tmp = tempfile.TemporaryDirectory()
        storage = f"sqlite:///{tmp.name}/study.db"
    name = _study_name(ctx, seed)
    optuna.create_study(direction="minimize", storage=storage, study_name=name, load_if_exists=True)
    share = max(1, max_trials // workers)
    jobs = [(ctx, constants, top_k, budget, seed + i, share, storage, name) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.starmap(_optuna_worker, jobs)
    top = _TopK(top_k)
    for ranked, _, _ in parts:
        for e in ranked:
            top.push(e)
    trials = len(optuna.load_study(study_name=name, storage=storage).trials)
    if tmp is not None:
        tmp.cleanup()
    notes = [f"optuna TPE: {workers} processes shared study {name} ({trials} trials); 'feasible' sums the "
             "structures each process found fitting (a structure tried by two processes counts twice)"]
    return top, sum(n for _, n, _ in parts), notes, sum(f for _, _, f in parts)


def _with_placement(ctx: SearchContext, e: Evaluated, constants: CostConstants) -> Evaluated:
    """Re-cost ``e`` on a link-aware placement when the cluster's links differ (measured matrix)."""
    if ctx.cluster.node_links is None or ctx.cluster.num_nodes == 1:
        return e
    from configurator.search.placement import optimize_placement

    placement = optimize_placement(ctx, e.plan, constants)
    if placement is None:
        return e
    inputs = prepare(ctx.model, ctx.cluster, ctx.job, e.plan, placement, runtime=ctx.runtime)
    placed = evaluate(inputs, constants)
    if placed.step_s >= e.step.step_s:
        return Evaluated(plan=e.plan, memory=e.memory, step=e.step, why=e.why, placement=None,
                         default_placement_step_s=e.step.step_s, tight=e.tight)
    return Evaluated(plan=e.plan, memory=e.memory, step=placed, why=e.why, placement=placement,
                     default_placement_step_s=e.step.step_s, tight=e.tight)


def gap(result: SearchResult, exhaustive: SearchResult) -> float | None:
    """Relative step-time gap of ``result``'s best to the exhaustive best (0 = found the optimum)."""
    if not result.ranked or not exhaustive.ranked:
        return None
    return result.ranked[0].step.step_s / exhaustive.ranked[0].step.step_s - 1.0


__all__ = ["EXHAUSTIVE_LIMIT", "METHODS", "Evaluated", "SearchResult", "gap", "search"]
