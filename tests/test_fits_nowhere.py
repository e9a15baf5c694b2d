"""``resolve.fits_nowhere``: the search drops a structure whose states alone exceed the GPU under every sharding before
its bounds and memory checks (``optimize._exhaustive``); it must hold only where ``resolve`` gives no option, change
no plan, and leave the smallest need reported when nothing fits as it was."""

from __future__ import annotations

import random

import pytest

from configurator import JobSpec, load_cluster, load_model
from configurator.margin import parse_margin
from configurator.search import optimize
from configurator.search.optimize import search
from configurator.search.parallel import fork_available
from configurator.search.resolve import fits_nowhere, resolve
from configurator.search.space import SearchContext, enumerate_plans

NOTHING_FITS = "nothing fits memory even with full recompute and optimizer offload"


def _ctx(model: str, cluster: str, gpus: int, batch: int, seq: int, margin: bool = False) -> SearchContext:
    extra = {"memory_margin": parse_margin(None)} if margin else {}
    return SearchContext(model=load_model(model), cluster=load_cluster(cluster, num_gpus=gpus),
                         job=JobSpec(global_batch=batch, seq_len=seq), **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("margin", [False, True], ids=["no-margin", "default-margin"])
def test_fits_nowhere_holds_only_where_resolve_has_no_option(margin: bool) -> None:
    """DeepSeek-V3 on 64 H800 (``search_speed.py``'s job): most structures fit nowhere, some do fit."""
    ctx = _ctx("deepseek-v3", "h800-ib", 64, 512, 4096, margin)
    plans = list(enumerate_plans(ctx))
    nowhere = somewhere = 0
    for plan in random.Random(3).sample(plans, 150):
        if fits_nowhere(ctx, plan):
            nowhere += 1
            res = resolve(ctx, plan)
            assert res.options == () and res.smallest_need_bytes > ctx.cluster.gpu_memory_bytes, plan.describe()
        else:
            somewhere += 1
    assert nowhere > 0 and somewhere > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_nothing_fits_reports_the_least_need_over_every_structure(workers: int) -> None:
    """Llama3-405B on 8 H100: every structure fits nowhere (each dropped unresolved), so the smallest need comes only
    from resolving them once the search ranks nothing; it is the least of ``resolve``'s over every structure."""
    if workers > 1 and not fork_available():
        pytest.skip("the parallel search needs fork")
    ctx = _ctx("llama3-405b", "dgx-h100", 8, 16, 8192)
    plans = list(enumerate_plans(ctx))
    assert all(fits_nowhere(ctx, p) for p in plans)
    least = min(need for need in (resolve(ctx, p).smallest_need_bytes for p in plans) if need)
    result = search(ctx, top_k=3, method="exhaustive", workers=workers)
    assert result.ranked == ()
    assert result.smallest_need_bytes == least
    assert dict(result.pruned)[NOTHING_FITS] == len(plans)


def test_dropping_structures_that_fit_nowhere_changes_no_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSeek-V3 on 64 H800: the same top plans with the check as with every structure bounded and resolved."""
    ctx = _ctx("deepseek-v3", "h800-ib", 64, 512, 4096)
    fast = search(ctx, top_k=3, method="exhaustive", workers=1)
    monkeypatch.setattr(optimize, "fits_nowhere", lambda _ctx, _plan: False)
    slow = search(ctx, top_k=3, method="exhaustive", workers=1)
    assert fast.ranked and [(e.plan, e.step.step_s) for e in fast.ranked] == \
        [(e.plan, e.step.step_s) for e in slow.ranked]
    assert dict(fast.pruned)[NOTHING_FITS] > dict(slow.pruned)[NOTHING_FITS]  # (the check drops them at the front)
