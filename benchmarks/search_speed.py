"""How fast the plan search is, and how much memory it holds, from 8 to 131,072 GPUs.

Run: ``python benchmarks/search_speed.py [--only SUBSTR] [--max-gpus N] [--workers N] [--optuna] [--compare-with DIR]
[--json OUT]``. Each job runs in a fresh process (so its peak RSS is its own) and prints: wall seconds of
the search, the method, legal structures, memory resolutions, costed options, whether a budget cut it
short, peak RSS, and the best plan.

* CPU seconds (``time.process_time``, plus the search's own processes) are what an idle core would take for a
  one-process search; on a shared machine wall time is longer by however much the other processes take.
* ``--workers N``: the exhaustive search in N processes (``search/parallel.py``; default 1 here, as the rows before
  session 7). "path s" is this process's CPU plus its slowest block's: the wall time on N idle cores, measurable
  on a loaded machine (run one shard at a time when wall time is wanted). RSS is the largest single process's.
* The default budget is used (no wall-clock limit; a work count), so a job is never cut short by how
  busy the machine is; a job that is cut short is marked TRUNCATED.
* ``--optuna``: on the MoE jobs, Optuna with a wall-clock budget equal to the exhaustive search's time,
  and the ratio of its best throughput to the exhaustive best (Optuna's own timing starts with the
  enumeration, so it gets the same total); ``--optuna-at-cpu``: the exhaustive search's CPU seconds
  instead (on a shared machine whose load changes between the two runs, equal wall time is not equal work).
* ``--compare-with DIR``: also run every job with the code in DIR (e.g. an older checkout:
  ``git archive BASE | tar -x -C DIR``) in alternating order (in one process; with the same ``--workers``), and print
  the speed-up and whether
  both return the same best plan — ratios measured in one run, since wall times on a shared machine are noisy.
  Each child checks that it imported the ``configurator`` of the tree it times (an error otherwise).

The grid: six models (dense Llama-3 8B/70B/405B; MoE Mixtral-8x22B, Qwen3-235B-A22B, DeepSeek-V3) on
their usual clusters (DGX H100; DeepSeek-V3 on H800 with InfiniBand) at 8, 64, 512, 2,048, 16,384 and
131,072 GPUs, and each on 64 GB200 (NVL72) GPUs; sequence 4,096, global batch max(512, GPUs) sequences. Then the
long-context jobs (``LONG_CONTEXT_JOBS``): GPT-OSS-120B on 64 GB200 at 131,072 tokens, 64 sequences, where many
CP/TP plans land within a few percent of each other and its alternating sliding-window and full-attention layers
test the bounds (``search/bound.py`` timed only the windowed kind: 26,680 options costed, ~237 CPU s, before).
Last the large-batch jobs (``LARGE_BATCH_JOBS``): four models on 64 GPUs at global batch 2,048 with the CLI's
default memory margin, as users run them (the jobs before have no margin, so none of their plans is tight).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from spawned import ChildFailed, checkout_problem, spawned_result  # (benchmarks/spawned.py)

REPO = Path(__file__).resolve().parent.parent

MODELS: tuple[tuple[str, str, bool], ...] = (
    ("llama3-8b", "dgx-h100", False), ("llama3-70b", "dgx-h100", False), ("llama3-405b", "dgx-h100", False),
    ("mixtral-8x22b", "dgx-h100", True), ("qwen3-235b-a22b", "dgx-h100", True), ("deepseek-v3", "h800-ib", True),
)
GPU_COUNTS = (8, 64, 512, 2048, 16384, 131072)
SEQ_LEN = 4096
LONG_CONTEXT_JOBS: tuple[tuple[str, str, int, int, int, bool], ...] = (
    ("gpt-oss-120b", "gb200-nvl72", 64, 131072, 64, True),
)
"""(model, cluster, GPUs, sequence length, global batch, MoE) of the jobs after the 42 of ``MODELS`` x
``GPU_COUNTS``: a long sequence, where attention (and its kinds: sliding-window or full) is most of the step."""
LARGE_BATCH_JOBS: tuple[tuple[str, str, int, int, bool], ...] = (
    ("deepseek-v3", "h800-ib", 64, 2048, True), ("llama3-70b", "dgx-h100", 64, 2048, False),
    ("qwen3-235b-a22b", "dgx-h100", 64, 2048, True), ("mixtral-8x22b", "dgx-h100", 64, 2048, True),
)
"""(model, cluster, GPUs, global batch, MoE) of the last jobs: the global batch users train with (2,048 sequences of
4,096 tokens, not the grid's 512: 4x the micro-batches, where the pipeline simulation of each costing is longer),
searched as ``configurator plan`` searches, with the default memory margin (``margin.default_margin``), which the
jobs above leave out. With it no DeepSeek-V3/64 H800 plan keeps the margin free, so every plan is tight (ranked
after any plan with headroom) and the search once costed every fitting option (2,434, ~35 CPU s, 438 MB RSS on
main 3466937, for 5 plans; ``optimize._TopK.bound_for``); the other three keep it (0.7-4.3 CPU s there)."""


def grid() -> list[dict[str, Any]]:
    jobs = []
    for model, cluster, moe in MODELS:
        for n in GPU_COUNTS:
            jobs.append({"model": model, "cluster": cluster, "num_gpus": n, "moe": moe})
        jobs.append({"model": model, "cluster": "gb200-nvl72", "num_gpus": 64, "moe": moe})
    for j in jobs:
        j["global_batch"] = max(512, j["num_gpus"])
        j["seq_len"] = SEQ_LEN
        j["name"] = f"{j['model']}/{j['num_gpus']} {j['cluster']}"
    for model, cluster, n, seq, batch, moe in LONG_CONTEXT_JOBS:
        jobs.append({"model": model, "cluster": cluster, "num_gpus": n, "moe": moe, "global_batch": batch,
                     "seq_len": seq, "name": f"{model}/{n} {cluster} seq{seq}"})
    for model, cluster, n, batch, moe in LARGE_BATCH_JOBS:
        jobs.append({"model": model, "cluster": cluster, "num_gpus": n, "moe": moe, "global_batch": batch,
                     "seq_len": SEQ_LEN, "margin": "default", "name": f"{model}/{n} {cluster} gbs{batch} margin"})
    return jobs


def job_context(job: dict[str, Any]) -> Any:
    """The job's ``SearchContext`` (imported from whichever ``configurator`` is on the path): with the CLI's default
    memory margin where the job says ``"margin": "default"``, else none."""
    from configurator import JobSpec, load_cluster, load_model
    from configurator.search.space import SearchContext

    extra: dict[str, Any] = {}
    if job.get("margin") == "default":
        from configurator.margin import parse_margin

        extra["memory_margin"] = parse_margin(None)
    return SearchContext(model=load_model(job["model"]), cluster=load_cluster(job["cluster"], num_gpus=job["num_gpus"]),
                         job=JobSpec(global_batch=job["global_batch"], seq_len=job["seq_len"]), **extra)


def _child(job: dict[str, Any], tree: str, method: str, budget: float | None, workers: int, queue: Any) -> None:
    """One search in this (fresh) process; puts its measurements on ``queue``."""
    import resource
    import time

    sys.path.insert(0, tree)
    import configurator
    from configurator.search.optimize import search

    ctx = job_context(job)
    loaded = str(Path(configurator.__file__).resolve())
    if not loaded.startswith(str(Path(tree).resolve())):
        raise RuntimeError(f"imported {loaded}, not the tree under test {tree}")

    def children_cpu() -> float:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return used.ru_utime + used.ru_stime

    start, cpu, child_cpu = time.perf_counter(), time.process_time(), children_cpu()
    kwargs: dict[str, Any] = {"top_k": 5, "method": method, "time_budget_s": budget}
    if budget is None and "work_budget" not in search.__code__.co_varnames:
        kwargs["time_budget_s"] = 600.0  # older code: a wall-clock budget only; make it never bind
    if workers != 1:
        kwargs["workers"] = workers
    r = search(ctx, **kwargs)
    wall = time.perf_counter() - start
    own_cpu = time.process_time() - cpu
    blocks = tuple(getattr(r, "block_cpu_s", ()))
    cpu = own_cpu + children_cpu() - child_cpu  # the processes of a parallel search too
    best = r.ranked[0] if r.ranked else None
    queue.put({"job_name": job["name"], "wall_s": wall, "cpu_s": cpu,
               # what the search would take on idle cores, one per process: this process's own CPU and its
               # slowest block's (the blocks run at once)
               "path_cpu_s": own_cpu + max(blocks, default=0.0), "blocks": len(blocks),
               "method": r.method, "structures": r.candidates, "options": r.options,
               "evaluated": r.evaluated, "truncated": bool(getattr(r, "truncated", False)),
               "peak_rss_mb": max(resource.getrusage(who).ru_maxrss
                                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024,
               "best": best.plan.describe() if best else None,
               "best_tokens_per_s_per_gpu": best.step.tokens_per_s_per_gpu if best else None})


def run_one(job: dict[str, Any], tree: Path, method: str = "exhaustive", budget: float | None = None,
            workers: int = 1) -> dict[str, Any]:
    try:
        return spawned_result(_child, (job, str(tree), method, budget, workers), timeout_s=900)
    except ChildFailed as exc:  # report the job as failed, keep the grid going
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run jobs whose name contains this")
    ap.add_argument("--max-gpus", type=int, default=max(GPU_COUNTS))
    ap.add_argument("--optuna", action="store_true", help="also Optuna at equal wall time on the MoE jobs")
    ap.add_argument("--optuna-at-cpu", action="store_true",
                    help="with --optuna: give Optuna the exhaustive search's CPU seconds as its wall-clock budget "
                         "(fairer than equal wall time when the load changes between the two runs)")
    ap.add_argument("--compare-with", type=Path, help="a checkout of other code to time against")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes of each exhaustive search (search/parallel.py; default 1). CPU s then sums them; "
                         "'path s' is this process's CPU plus the slowest block's: the wall time on idle cores")
    args = ap.parse_args(argv)
    problem = checkout_problem("compare-with", args.compare_with) if args.compare_with is not None else None
    if problem:
        ap.error(problem)
    jobs = [j for j in grid() if j["num_gpus"] <= args.max_gpus and (not args.only or args.only in j["name"])]
    rows = []
    print(f"{'job':34} {'wall s':>7} {'CPU s':>6} {'path s':>6} {'method':>10} {'structs':>7} {'options':>7} {'costed':>6} "
          f"{'RSS MB':>7}  best")
    for i, job in enumerate(jobs):
        row: dict[str, Any] = {"job": job["name"]}
        if args.compare_with is not None and i % 2:
            row["other"] = run_one(job, args.compare_with, workers=args.workers)
        row["this"] = run_one(job, REPO, workers=args.workers)
        if args.compare_with is not None and not i % 2:
            row["other"] = run_one(job, args.compare_with, workers=args.workers)
        this = row["this"]
        if "error" in this:
            print(f"{job['name']:34} ERROR {this['error']}")
            rows.append(row)
            continue
        flag = " TRUNCATED" if this["truncated"] else ""
        print(f"{job['name']:34} {this['wall_s']:7.2f} {this['cpu_s']:6.2f} {this['path_cpu_s']:6.2f} {this['method']:>10} "
              f"{this['structures']:7d} "
              f"{this['options']:7d} {this['evaluated']:6d} {this['peak_rss_mb']:7.0f}  {this['best']}{flag}", flush=True)
        if "other" in row and "error" in row["other"]:
            print(f"{'':34} other code: ERROR {row['other']['error']}", flush=True)
        elif "other" in row:
            o = row["other"]
            same = o["best"] == this["best"]
            row["speedup"] = o["cpu_s"] / this["cpu_s"]
            row["path_speedup"] = o["path_cpu_s"] / this["path_cpu_s"]
            row["same_best"] = same
            print(f"{'':34} other code: {o['wall_s']:.2f} s wall, {o['cpu_s']:.2f} s CPU ({row['speedup']:.2f}x the CPU, "
                  f"{row['path_speedup']:.2f}x the path), {o['evaluated']} costed, "
                  f"RSS {o['peak_rss_mb']:.0f} MB, best {'the same' if same else o['best']}", flush=True)
        if args.optuna and job["moe"] and this["best"]:
            given = max(this["cpu_s"] if args.optuna_at_cpu else this["wall_s"], 0.5)
            opt = run_one(job, REPO, method="optuna", budget=given)
            if "error" not in opt and opt["best_tokens_per_s_per_gpu"]:
                row["optuna"] = opt
                row["optuna_ratio"] = opt["best_tokens_per_s_per_gpu"] / this["best_tokens_per_s_per_gpu"]
                print(f"{'':34} optuna at {given:.2f} s: {opt['evaluated']} costed, "
                      f"{row['optuna_ratio']:.3f} of the exhaustive best ({opt['best']})", flush=True)
        rows.append(row)
    ok = [r["this"] for r in rows if "error" not in r["this"]]
    if ok:
        walls = [r["wall_s"] for r in ok]
        cpus = [r["cpu_s"] for r in ok]
        print(f"\n{len(ok)} jobs: wall median {statistics.median(walls):.2f} s, max {max(walls):.2f} s; CPU median "
              f"{statistics.median(cpus):.2f} s, max {max(cpus):.2f} s "
              f"({max(ok, key=lambda r: r['cpu_s'])['job_name']}); truncated {sum(r['truncated'] for r in ok)}; "
              f"peak RSS max {max(r['peak_rss_mb'] for r in ok):.0f} MB (per process)")
        paths = [r["path_cpu_s"] for r in ok]
        print(f"within 2 s: {sum(c <= 2.0 for c in cpus)} by CPU, {sum(p <= 2.0 for p in paths)} by path (this "
              f"process's CPU + its slowest block's: the wall time on one idle core per process; path median "
              f"{statistics.median(paths):.2f} s, max {max(paths):.2f} s)")
        speed = [r["speedup"] for r in rows if "speedup" in r]
        if speed:
            path = [r["path_speedup"] for r in rows if "path_speedup" in r]
            print(f"speed-up over the other code: CPU median {statistics.median(speed):.2f}x, min {min(speed):.2f}x; "
                  f"path median {statistics.median(path):.2f}x, min {min(path):.2f}x; "
                  f"same best plan in {sum(r['same_best'] for r in rows if 'same_best' in r)} of {len(speed)}")
        ratios = [r["optuna_ratio"] for r in rows if "optuna_ratio" in r]
        if ratios:
            print(f"optuna at the exhaustive search's {'CPU' if args.optuna_at_cpu else 'wall'} time: "
                  f"{min(ratios):.3f} .. {max(ratios):.3f} of the exhaustive best")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
