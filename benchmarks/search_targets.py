"""The plan search's targets (issue "The plan command"), measured.

Run: ``python benchmarks/search_targets.py [--json OUT]``. Each target prints what was measured; the
script exits 1 if a target that is a count or a ratio fails. Wall times are reported against their
targets but never fail the script (shared machines are noisy; compare ratios measured in one run).

Targets:
1. Llama-3.1-405B, 16,384 H100 (dgx-h100), seq 8192, global batch 2048: best plan <= 10 s, modelled
   throughput >= Meta's published plan (TP8 CP1 PP16 DP128, 7/8x14/7 layers) modelled the same way.
2. GPT-3 175B, 1,024 A100 (dgx-a100), seq 2048, global batch 1536, fp16: at least as good as Narayanan
   et al. 2021's TP8 PP16 interleaved plan, <= 5 s.
3. DeepSeek-V3 on 2,048 H800 (h800-ib) and Mixtral-8x22B on 256 H100: expert-parallel plans among the best
   five, <= 10 s each; and the gap between Optuna's best (8 s budget) and the exhaustive best.
4. 64 nodes with a measured-style matrix, 10% of node pairs at 1/4 bandwidth: the placement beats
   Megatron's default order in modelled step time (gain reported).
5. Jobs that fit only with optimizer offload (no plan without host memory): Llama-3-70B on one 8-GPU
   H100 node; and a job where a partial fraction is enough (Llama-3-70B on 16 H100, seq 8192, GBS 128).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configurator import JobSpec, Plan, load_cluster, load_model  # noqa: E402
from configurator.bench import modelled_alike  # noqa: E402
from configurator.cost import evaluate, load_calibration, prepare  # noqa: E402
from configurator.search.optimize import gap, search  # noqa: E402
from configurator.search.placement import place  # noqa: E402
from configurator.search.space import SearchContext  # noqa: E402
from configurator.specs.hardware import LinkSpec  # noqa: E402
from configurator.specs.plan import balanced_layout  # noqa: E402

CONSTANTS = load_calibration()


def reference(ctx: SearchContext, structure: Plan) -> tuple[Plan, float]:
    """A published plan modelled the same way as the search's (``configurator.bench.modelled_alike``)."""
    best = modelled_alike(ctx, structure, CONSTANTS)
    if best is None:
        return structure, 0.0
    return best[0].plan, best[1].tokens_per_s_per_gpu


def measured_cluster(nodes: int, slow_fraction: float, factor: float, seed: int):  # type: ignore[no-untyped-def]
    base = load_cluster("dgx-h100", nodes=nodes)
    so = base.scale_out_link
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(nodes) for b in range(a + 1, nodes)]
    slow = set(rng.sample(pairs, int(round(slow_fraction * len(pairs)))))
    links = tuple(tuple(None if a == b else LinkSpec(
        bandwidth_Bps=so.bandwidth_Bps * (factor if (min(a, b), max(a, b)) in slow else 1.0), latency_s=so.latency_s)
        for b in range(nodes)) for a in range(nodes))
    return replace(base, node_links=links, name=f"measured-{nodes}-nodes")


def run() -> tuple[list[dict[str, Any]], list[str]]:
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def record(name: str, ok: bool, **data: Any) -> None:
        results.append({"target": name, "ok": ok, **data})
        if not ok:
            failures.append(name)
        print(f"[{'ok' if ok else 'FAIL'}] {name}: " + ", ".join(f"{k}={v}" for k, v in data.items()))

    # 1. Llama-3.1-405B at 16k GPUs.
    ctx = SearchContext(model=load_model("llama3-405b"), cluster=load_cluster("dgx-h100", num_gpus=16384),
                        job=JobSpec(global_batch=2048, seq_len=8192))
    r = search(ctx, top_k=5)
    meta_plan, meta = reference(ctx, Plan(tp=8, pp=16, cp=1, dp=128, sp=True,
                                          pipeline_layers=balanced_layout(126, 16)))
    best = r.ranked[0]
    record("405B: best >= Meta's plan, modelled alike", best.step.tokens_per_s_per_gpu >= meta,
           best=best.plan.describe(), best_tokens_per_s_per_gpu=round(best.step.tokens_per_s_per_gpu, 1),
           meta=meta_plan.describe(), meta_tokens_per_s_per_gpu=round(meta, 1),
           seconds=round(r.seconds, 2), seconds_target=10, method=r.method, candidates=r.candidates,
           evaluated=r.evaluated)
    # 2. GPT-3 175B at 1k A100.
    ctx = SearchContext(model=load_model("gpt3-175b"), cluster=load_cluster("dgx-a100", num_gpus=1024),
                        job=JobSpec(global_batch=1536, seq_len=2048, precision="fp16"))
    r = search(ctx, top_k=5)
    sc21_plan, sc21 = reference(ctx, Plan(tp=8, pp=16, vpp=3, dp=8, sp=True))
    best = r.ranked[0]
    record("GPT-3 175B: best >= Narayanan 2021's TP8 PP16 interleaved", best.step.tokens_per_s_per_gpu >= sc21,
           best=best.plan.describe(), best_tokens_per_s_per_gpu=round(best.step.tokens_per_s_per_gpu, 1),
           sc21=sc21_plan.describe(), sc21_tokens_per_s_per_gpu=round(sc21, 1), seconds=round(r.seconds, 2),
           seconds_target=5, method=r.method, candidates=r.candidates, evaluated=r.evaluated)
    # 3. MoE.
    for name, model, cluster, gpus, gbs in (("DeepSeek-V3 on 2048 H800", "deepseek-v3", "h800-ib", 2048, 4096),
                                            ("Mixtral-8x22B on 256 H100", "mixtral-8x22b", "dgx-h100", 256, 1024)):
        ctx = SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                            job=JobSpec(global_batch=gbs, seq_len=4096))
        r = search(ctx, top_k=5, time_budget_s=8.0)
        best = r.ranked[0] if r.ranked else None
        ep_plans = [e for e in r.ranked if e.plan.ep > 1]
        record(f"{name}: expert-parallel plans found", bool(ep_plans),
               best=best.plan.describe() if best else None,
               best_tokens_per_s_per_gpu=round(best.step.tokens_per_s_per_gpu, 1) if best else None,
               best_ep_plan=ep_plans[0].plan.describe() if ep_plans else None,
               seconds=round(r.seconds, 2), seconds_target=10, method=r.method, candidates=r.candidates,
               evaluated=r.evaluated)
        # Where both can run: Optuna (TPE, seed 0, 8 s) against the exhaustive optimum. Reported, not gated.
        opt = search(ctx, top_k=1, method="optuna", time_budget_s=8.0, seed=0)
        exhaustive = r if r.method == "exhaustive" else search(ctx, top_k=1, method="exhaustive", time_budget_s=600.0)
        g = gap(opt, exhaustive)
        record(f"{name}: gap of Optuna's best to the exhaustive best (reported)", g is not None,
               optuna_best=opt.ranked[0].plan.describe() if opt.ranked else None,
               exhaustive_best=exhaustive.ranked[0].plan.describe(),
               gap_pct=round(100 * g, 2) if g is not None else None, optuna_structures_costed=opt.notes[0])
    # 4. Placement on a 64-node cluster with slow pairs.
    cluster = measured_cluster(64, 0.10, 0.25, seed=7)
    ctx = SearchContext(model=load_model("llama3-70b"), cluster=cluster, job=JobSpec(global_batch=512, seq_len=8192))
    plan = Plan(tp=8, pp=8, vpp=5, dp=8, sp=True, recompute="full")
    t0 = time.perf_counter()
    placed = place(ctx, plan)
    seconds = time.perf_counter() - t0
    default = evaluate(prepare(ctx.model, cluster, ctx.job, plan), CONSTANTS).step_s
    better = evaluate(prepare(ctx.model, cluster, ctx.job, plan, placed.placement), CONSTANTS).step_s
    record("64 nodes, 10% of pairs at 1/4 bandwidth: placement beats Megatron's order", better < default,
           plan=plan.describe(), default_step_s=round(default, 4), placed_step_s=round(better, 4),
           gain_pct=round(100 * (default / better - 1), 2), method=placed.method, seconds=round(seconds, 2))
    # 5. Offload. Each job must fit only with offload: with 1 byte of host memory per node (nothing can be
    # offloaded) the search finds no plan. Llama-3-70B on 64 H100 (GBS 256, seq 8192) was the partial case
    # until the memory model of sessions 4-5 fitted it without offload; on 16 H100 nothing fits without it.
    for name, gpus, gbs, seq in (("Llama-3-70B on one 8-GPU H100 node", 8, 32, 4096),
                                 ("Llama-3-70B on 16 H100", 16, 128, 8192)):
        cluster = load_cluster("dgx-h100", num_gpus=gpus)
        job = JobSpec(global_batch=gbs, seq_len=seq)
        ctx = SearchContext(model=load_model("llama3-70b"), cluster=cluster, job=job)
        r = search(ctx, top_k=3)
        best = r.ranked[0]
        no_host = search(replace(ctx, cluster=replace(cluster, host_memory_bytes_per_node=1)), top_k=1)
        record(f"{name}: fits only with offload, and the search chose an offload fraction",
               not no_host.ranked and 0 < best.plan.offload <= 1 and best.memory.fits,
               best=best.plan.describe(), offload=best.plan.offload, why=best.why,
               plans_without_host_memory=len(no_host.ranked),
               host_gib=round(best.memory.host_peak_bytes / 2**30, 1),
               host_capacity_gib=round(best.memory.host_capacity_bytes / 2**30, 1), seconds=round(r.seconds, 2))
    return results, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results, failures = run()
    if args.json:
        args.json.write_text(json.dumps({"results": results, "failures": failures}, indent=2) + "\n")
    print(f"{len(results) - len(failures)}/{len(results)} targets met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
