"""Optuna against the exhaustive search at equal CPU time, on the issue's four MoE jobs.

Run: ``python benchmarks/search_optuna.py [--only SUBSTR] [--other] [--sampler structure|tpe|tpe-multivariate]
[--trials N] [--cpu-factor F] [--out FILE]``. For each job, in fresh processes: the exhaustive search (its CPU
seconds and best step), then one Optuna search bounded by its trial count (``--trials``, default the search's own),
which records the CPU second at which each better plan was found, and is stopped after F (default 2) times the
exhaustive search's CPU seconds. The ratio "at equal CPU" is the exhaustive best step over the best Optuna had
found by the exhaustive search's CPU seconds: what an Optuna search given that many seconds on an idle core returns
(a budgeted search is a prefix of the unbudgeted one: the same seed takes the same steps until its clock runs out).
CPU seconds, not wall seconds, so the comparison holds on a loaded machine where ``search_speed.py --optuna`` (a
wall-clock budget) does not. Also printed: Optuna's note (structures costed, warm-start count) and the rank of the
exhaustive best structure in lower-bound order (where the warm start reaches it, the sampler is not what finds it).

CPU seconds of two processes on a shared machine still differ by 10-20% run to run, so the work is also counted, which
does not depend on the load: the calls each search makes to ``optimize``'s memory checks and bounds, full memory
resolutions and step evaluations (``COUNTED``), until it found the exhaustive best and in all. The three kinds differ
in cost (about 0.1-1, 2-10 and 2-5 ms a call), so they are printed apart. ``--tree DIR``: import ``configurator`` from
DIR (another checkout, e.g. the branch's base) instead of this one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spawned import ChildFailed, checkout_problem, spawned_result  # (benchmarks/spawned.py)

REPO = Path(__file__).resolve().parent.parent
JOBS = (("qwen3-235b-a22b", "dgx-h100", 64), ("deepseek-v3", "gb200-nvl72", 64), ("mixtral-8x22b", "dgx-h100", 64),
        ("deepseek-v3", "h800-ib", 512))
OTHER_JOBS = (("mixtral-8x7b", "dgx-h100", 64), ("qwen3-30b-a3b", "dgx-h100", 128), ("llama3-70b", "dgx-h100", 256))
"""``--other``: jobs outside the issue's four (two MoE, one dense), to check that a change to the Optuna search
made for the four does not make others worse."""
SEQ_LEN = 4096
COUNTED = {"fits_nowhere": 0, "resolve_least": 0, "costly_terms": 0, "may_keep_margin": 0, "needs_full_recompute": 0,
           "offloads_with_full_recompute": 0, "resolve": 1, "resolve_full_recompute": 1, "evaluate": 2}
"""The calls in ``configurator.search.optimize`` counted as work, by kind: 0 the memory checks and structure-level
bounds, 1 the full memory resolutions, 2 the step evaluations (together most of either search's CPU)."""
TREE = [REPO]
"""Where ``configurator`` is imported from (``--tree``; passed to each spawned process)."""


def _context(model: str, cluster: str, gpus: int) -> Any:
    sys.path.insert(0, str(TREE[0]))
    import configurator
    from configurator import JobSpec, load_cluster, load_model
    from configurator.search.space import SearchContext

    if not str(Path(configurator.__file__).resolve()).startswith(str(TREE[0])):
        raise SystemExit(f"imported {configurator.__file__}, not {TREE[0]}")
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=max(512, gpus), seq_len=SEQ_LEN))


def _count_work() -> list[int]:
    """Count the calls of ``COUNTED`` that a tree's ``optimize`` makes from now on, per kind, in the list returned."""
    from configurator.search import optimize

    count = [0, 0, 0]

    def counting(f: Any, kind: int) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            count[kind] += 1
            return f(*args, **kwargs)
        return counted
    for name, kind in COUNTED.items():
        if hasattr(optimize, name):
            setattr(optimize, name, counting(getattr(optimize, name), kind))
    return count


def _exhaustive(job: tuple[str, str, int], tree: Path, queue: Any) -> None:
    import time

    TREE[0] = tree
    ctx = _context(*job)
    from configurator.search import optimize

    work = _count_work()
    found: list[tuple[tuple[int, ...], float]] = []  # (work, step) of every better plan
    push = optimize._TopK.push

    def recording(self: Any, item: Any) -> None:
        if not item.tight and (not found or item.step.step_s < found[-1][1]):
            found.append((tuple(work), item.step.step_s))
        push(self, item)

    optimize._TopK.push = recording  # type: ignore[method-assign]
    cpu = time.process_time()
    r = optimize.search(ctx, top_k=5, method="exhaustive")
    cpu = time.process_time() - cpu
    best = r.ranked[0]
    queue.put({"cpu_s": cpu, "step_s": best.step.step_s, "plan": best.plan.describe(), "key": optimize._key(best.plan),
               "work": tuple(work), "found": found})


class _Stop(Exception):
    """Raised from the progress callback once the CPU limit is passed: the rest of the run is not read."""


def _optuna(job: tuple[str, str, int], trials: int | None, best_key: tuple, limit_cpu_s: float, sampler: str | None,
            tree: Path, queue: Any) -> None:
    import time

    TREE[0] = tree
    sys.path.insert(0, str(tree))
    from configurator.search import optimize

    if sampler is not None:  # "tpe-multivariate": Optuna's TPESampler(multivariate=True, group=True)
        optimize.OPTUNA_SAMPLER = "tpe" if sampler.startswith("tpe") else sampler
        optimize.OPTUNA_MULTIVARIATE = sampler == "tpe-multivariate"
    from configurator.search.bound import StructureBounds
    from configurator.search.space import enumerate_plans

    ctx = _context(*job)
    work = _count_work()
    found: list[tuple[float, float, tuple[int, ...]]] = []
    start = time.process_time()
    push = optimize._TopK.push

    def recording(self: Any, item: Any) -> None:  # the CPU second and the work of every improvement of the best
        if not item.tight and (not found or item.step.step_s < found[-1][1]):
            found.append((time.process_time() - start, item.step.step_s, tuple(work)))
        push(self, item)

    optimize._TopK.push = recording  # type: ignore[method-assign]
    kwargs: dict[str, Any] = {} if trials is None else {"max_trials": trials}

    def stop_after_limit(_fraction: float, _message: str) -> None:
        if time.process_time() - start > limit_cpu_s:
            raise _Stop

    try:
        notes = list(optimize.search(ctx, top_k=5, method="optuna", progress=stop_after_limit, **kwargs).notes)
    except _Stop:
        notes = [f"stopped after {limit_cpu_s:.0f} CPU s (the trial cap not reached)"]
    total = time.process_time() - start
    optimize._TopK.push = push  # type: ignore[method-assign]
    # Where the exhaustive best structure ranks in lower-bound order (default pipeline split).
    constants = optimize.load_calibration()
    bounds = StructureBounds(ctx, constants)
    first: dict[tuple, Any] = {}
    for p in enumerate_plans(ctx):
        first.setdefault(optimize._key(p), p)
    order = sorted(first, key=lambda k: (bounds.bound(first[k]), k))
    queue.put({"found": found, "cpu_s": total, "notes": notes, "work": tuple(work),
               "rank": order.index(best_key) if best_key in first else None, "structures": len(first)})


def _run(target: Any, *args: Any) -> dict[str, Any]:
    """``target``'s result from a fresh process (``spawned.spawned_result``); one that gives none stops the benchmark."""
    try:
        return spawned_result(target, args, timeout_s=3600)
    except ChildFailed as exc:
        raise SystemExit(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run jobs whose name contains this")
    ap.add_argument("--trials", type=int, help="Optuna's trial count (default: the search's own)")
    ap.add_argument("--cpu-factor", type=float, default=2.0,
                    help="stop Optuna after this many times the exhaustive search's CPU seconds (default 2)")
    ap.add_argument("--sampler", choices=("structure", "tpe", "tpe-multivariate"),
                    help="the sampled trials' sampler (optimize.OPTUNA_SAMPLER; default: the search's own)")
    ap.add_argument("--other", action="store_true", help="run OTHER_JOBS instead of the issue's four")
    ap.add_argument("--out", type=Path, help="also write the table here")
    ap.add_argument("--tree", type=Path, default=REPO,
                    help="import configurator from this checkout (default: this one)")
    args = ap.parse_args(argv)
    tree = args.tree.resolve()
    problem = checkout_problem("tree", args.tree)
    if problem:
        ap.error(problem)
    at_factor = f"at {args.cpu_factor:g}x CPU"  # (the study is stopped there: its best by then)
    lines = [f"{'job':30} {'exh. CPU s':>10} {'Optuna CPU s':>12} {'at equal CPU':>12} {at_factor:>9} "
             f"{'best rank':>9}  Optuna found the exhaustive best at"]
    print(lines[0], flush=True)
    for model, cluster, gpus in OTHER_JOBS if args.other else JOBS:
        name = f"{model}/{gpus} {cluster}"
        if args.only and args.only not in name:
            continue
        ex = _run(_exhaustive, (model, cluster, gpus), tree)
        op = _run(_optuna, (model, cluster, gpus), args.trials, ex["key"], args.cpu_factor * ex["cpu_s"],
                  args.sampler, tree)

        def ratio_at(cpu: float, ex: dict[str, Any] = ex, op: dict[str, Any] = op) -> float:
            steps = [s for t, s, _ in op["found"] if t <= cpu]
            return ex["step_s"] / min(steps) if steps else 0.0

        hit = next((t for t, s, _ in op["found"] if s <= ex["step_s"] * (1 + 1e-9)), None)
        ex_hit = next(w for w, s in ex["found"] if s <= ex["step_s"] * (1 + 1e-9))
        op_hit = next((w for _, s, w in op["found"] if s <= ex["step_s"] * (1 + 1e-9)), None)
        line = (f"{name:30} {ex['cpu_s']:10.1f} {op['cpu_s']:12.1f} {ratio_at(ex['cpu_s']):12.4f} "
                f"{ratio_at(args.cpu_factor * ex['cpu_s']):{len(at_factor)}.4f} {op['rank']!s:>5}/{op['structures']:<5} "
                f"{'never' if hit is None else f'{hit:.1f} CPU s'}")
        def kinds(work: tuple[int, ...] | None) -> str:
            return "never" if work is None else "/".join(map(str, work))

        work = (f"    work (memory checks/resolutions/evaluations) to the exhaustive best, in all: exhaustive "
                f"{kinds(ex_hit)}, {kinds(ex['work'])}; Optuna {kinds(op_hit)}, {kinds(op['work'])}"
                f"{' (stopped)' if op['notes'][0].startswith('stopped') else ''}")
        lines += [line, f"    exhaustive best: {ex['plan']} ({ex['step_s']:.4f} s)", f"    {op['notes'][0]}", work]
        print("\n".join(lines[-4:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
