"""How far the risk-aware leader moves when the search keeps more plans for the ranking.

Run from the repository root: ``python benchmarks/ranking_pool.py`` (~1 min on 2 cores). For each job, the
leader ``plan`` names (the ranking over ``ranking.ranking_pool(5)`` = 10 plans) against the leader over a pool
grown 4x at a time (40, 160, 640) until it holds 5 plans under the OOM-risk limit: its throughput, its OOM risk,
the pools searched and the seconds they took. The README's "Ranking that survives the band" quotes it: at the
default memory margin the fastest plans of large jobs sit just over the 5% limit."""

from __future__ import annotations

import time

from configurator.margin import parse_margin
from configurator.profiles import load_cluster, load_model
from configurator.ranking import DEFAULT_OOM_RISK, band_of, rank_plans, ranking_pool
from configurator.search.optimize import search
from configurator.search.space import SearchContext
from configurator.specs.job import JobSpec

TOP = 5
MAX_POOL = 640
JOBS = (  # model, cluster, GPUs, seq, global batch, precision
    ("llama3-70b", "dgx-h100", 64, 8192, 256, "bf16"),
    ("llama3-405b", "dgx-h100", 64, 8192, 256, "bf16"),
    ("qwen3-235b-a22b", "dgx-h100", 64, 4096, 2048, "bf16"),
    ("mixtral-8x22b", "dgx-h100", 64, 4096, 2048, "bf16"),
    ("deepseek-v3", "h800-ib", 256, 4096, 4096, "fp8"),
    ("gpt3-175b", "dgx-a100", 128, 2048, 1536, "bf16"),
    ("llama2-70b", "dgx-a100", 16, 4096, 128, "bf16"),
)


def leader(ctx: SearchContext, pools: list[int]) -> tuple[str, float, float, list[int], float]:
    """(plan, tokens/s/GPU, OOM risk, pools searched, seconds) of the leader over the first of ``pools`` that
    holds ``TOP`` plans under the limit (or the last)."""
    start, tried = time.monotonic(), []
    for k in pools:
        tried.append(k)
        ranked = list(search(ctx, top_k=k).ranked)
        under = sum(1 for e in ranked if not getattr(e, "tight", False)
                    and band_of(ctx.model, ctx.cluster, ctx.job, e).oom_risk <= DEFAULT_OOM_RISK)
        if under >= TOP or len(ranked) < k:
            break
    best = rank_plans(ctx.model, ctx.cluster, ctx.job, ranked, top=1)[0]
    return (best.evaluated.plan.describe(), best.evaluated.step.tokens_per_s_per_gpu, best.band.oom_risk, tried,
            time.monotonic() - start)


def main() -> None:
    grown = [ranking_pool(TOP)]
    while grown[-1] < MAX_POOL:
        grown.append(min(4 * grown[-1], MAX_POOL))
    for name, cluster, gpus, seq, gbs, precision in JOBS:
        model = load_model(name)
        ctx = SearchContext(model=model, cluster=load_cluster(cluster, num_gpus=gpus),
                            job=JobSpec(global_batch=gbs, seq_len=seq, precision=precision), runtime="megatron",
                            framework="megatron", memory_margin=parse_margin(None))
        print(f"{name}/{gpus} {cluster} seq {seq} GBS {gbs} {precision}")
        for label, pools in (("plan's pool", grown[:1]), ("grown", grown)):
            plan, tps, risk, tried, seconds = leader(ctx, pools)
            print(f"  {label:12s} {tps:8,.0f} tokens/s/GPU  OOM risk {100 * risk:4.1f}%  pools {tried}  "
                  f"{seconds:5.1f} s  {plan}")


if __name__ == "__main__":
    main()
