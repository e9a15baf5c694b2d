"""Per structure (degrees + micro-batch), the memory-driven choices: sharding, recompute, offload.

None of the three makes a plan faster by itself; each only buys memory. So for a structure we try the
runtime's shardings from the least sharded up and, for each, the least recompute that fits (none,
selective where it saves memory, full recompute of 1, 2, ... layers per chunk, all layers — found by
bisection, memory falls monotonically along that ladder), and the optimizer offload fraction:

* when even full recompute does not fit, the smallest fraction that fits (memory is affine in the
  fraction, so two estimates give it exactly; rounded up to 1%), and host RAM is checked;
* when it fits only with recompute, also the offload fraction that lets *no* recompute fit, because
  CPU Adam and PCIe transfers can hide where recompute cannot (the trade-off of "Deep Optimizer States",
  2024);
* and, for any offloaded option, the fraction that balances the GPU and CPU halves of the optimizer step
  if that is larger (then the offload costs no time: ``f = G / (G + C)``).

The search costs every option and keeps the fastest. A more sharded option is only tried while the
less sharded ones need recompute or offload (more sharding adds communication and cannot be faster
than a fitting plan without recompute). A structure with no option gets the reason, with the smallest
memory it would need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from configurator.cost.step import ADAM_BYTES_PER_PARAM, OFFLOAD_PCIE_BYTES_PER_PARAM, cpu_adam_rate_per_gpu
from configurator.memory import MemoryReport, estimate_memory
from configurator.profiles import GIB
from configurator.search.space import SearchContext, framework_shardings
from configurator.specs.plan import Plan, plan_violations
from configurator.specs.plan import replace_unchecked as replace  # derived from checked plans


@dataclass(frozen=True, kw_only=True, slots=True)
class Option:
    """A fitting plan for a structure, with why its memory choices were made."""

    plan: Plan
    memory: MemoryReport
    why: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolution:
    options: tuple[Option, ...]
    reason: str = ""
    """Why nothing fits (empty when there are options)."""
    smallest_need_bytes: float = 0.0


class RecomputeLadder(Sequence[Plan]):
    """Least to most recompute: none, selective, full recompute of 1, 2, ... layers per chunk
    (Megatron-style runtimes), all layers. Plans are built on demand (the search bisects it)."""

    def __init__(self, ctx: SearchContext, plan: Plan) -> None:
        self.plan = plan
        chunk = min(n for n in plan.virtual_stage_layers(ctx.model) if n > 0)
        partial = chunk - 1 if ctx.runtime in ("megatron", "nemo", "megatron-2021") else 0
        self.steps: list[tuple[str, int]] = ([("none", 0), ("selective", 0)]
                                             + [("full", k) for k in range(1, partial + 1)] + [("full", 0)])
        self._built: dict[int, Plan] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = index % len(self.steps)
        if index not in self._built:
            recompute, layers = self.steps[index]
            self._built[index] = replace(self.plan, recompute=recompute, recompute_num_layers=layers)
        return self._built[index]


def recompute_ladder(ctx: SearchContext, plan: Plan) -> RecomputeLadder:
    return RecomputeLadder(ctx, plan)


MEMORY_MEMO: ContextVar[dict[Plan, MemoryReport] | None] = ContextVar("configurator_memory_memo", default=None)
"""Set by a search for its duration: memory estimates by plan, so the plans ``resolve`` estimates twice
(the quick exit's frugal forms again in the offload search, a ladder's ends) are estimated once."""


def _memory(ctx: SearchContext, plan: Plan) -> MemoryReport:
    memo = MEMORY_MEMO.get()
    if memo is None:
        return estimate_memory(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
    hit = memo.get(plan)
    if hit is None:
        hit = memo[plan] = estimate_memory(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
    return hit


def _least_fitting(ctx: SearchContext, ladder: Sequence[Plan], last: MemoryReport,
                   first_out: list[MemoryReport | None]) -> tuple[int, MemoryReport]:
    """Index of the first plan of the ladder that fits the device (bisection) and its memory; -1 and
    the memory of the last plan (``last``) if none does."""
    lo, hi = 0, len(ladder) - 1
    hi_mem = last
    if not hi_mem.fits_device:
        return -1, hi_mem
    first = _memory(ctx, ladder[0])
    first_out[0] = first
    if first.fits_device:  # the common case: no recompute needed
        return 0, first
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        mem = _memory(ctx, ladder[mid])
        if mem.fits_device:
            hi, hi_mem = mid, mem
        else:
            lo = mid + 1
    return hi, hi_mem


def min_offload(ctx: SearchContext, plan: Plan, m0: MemoryReport | None = None) -> tuple[float, MemoryReport] | None:
    """The smallest offload fraction (1% steps) under which ``plan`` fits, or None. ``m0``: the memory
    of ``plan`` without offload, if already known."""
    if plan.sharding == "none":
        return None
    m0 = m0 or _memory(ctx, replace(plan, offload=0.0))
    if m0.fits:
        return 0.0, m0
    m1 = _memory(ctx, replace(plan, offload=1.0))
    if not m1.fits_device:
        return None
    cap = m0.capacity_bytes
    need = 0.0
    for s0, s1 in zip(m0.stages, m1.stages):
        if s0.total_bytes > cap:
            need = max(need, (s0.total_bytes - cap) / (s0.total_bytes - s1.total_bytes))
    f = min(1.0, math.ceil(need * 100 - 1e-9) / 100)
    mem = _memory(ctx, replace(plan, offload=f))
    while not mem.fits_device and f < 1.0:  # rounding guard
        f = min(1.0, f + 0.01)
        mem = _memory(ctx, replace(plan, offload=f))
    if not mem.fits:
        return None  # host RAM too small for the offloaded states
    return f, mem


def balanced_offload(ctx: SearchContext) -> float:
    """Offload fraction at which the GPU and CPU halves of the optimizer step take equally long."""
    gpu = ctx.cluster.gpu
    g = ADAM_BYTES_PER_PARAM / gpu.hbm_bandwidth_Bps
    cpu_rate = cpu_adam_rate_per_gpu(ctx.cluster)
    c = max(1.0 / cpu_rate, OFFLOAD_PCIE_BYTES_PER_PARAM / gpu.pcie_host_bandwidth_Bps)
    return g / (g + c)


def resolve(ctx: SearchContext, structure: Plan) -> Resolution:
    options: list[Option] = []
    smallest = math.inf
    shardings = framework_shardings(ctx, structure)
    # Quick exit: no sharding fits the device even with full recompute and all optimizer states on the
    # host (more sharding is not always less memory: ZeRO-3 also holds gathered layers).
    frugal = [_memory(ctx, replace(structure, sharding=sh, recompute="full", recompute_num_layers=0,
                                   offload=1.0 if sh != "none" else 0.0)) for sh in shardings]
    least = min(frugal, key=lambda m: m.peak_bytes)
    if not least.fits_device:
        return Resolution(options=(), smallest_need_bytes=least.peak_bytes,
                          reason=f"needs {least.peak_bytes / GIB:.1f} GiB of {least.capacity_bytes / GIB:.1f} "
                                 "GiB even with full recompute and optimizer offload")
    for sharding in shardings:
        base = replace(structure, sharding=sharding)
        if plan_violations(ctx.model, ctx.job, base, ctx.num_gpus):
            continue
        ladder = recompute_ladder(ctx, base)
        full = _memory(ctx, ladder[-1])
        ladder_first: list[MemoryReport | None] = [None]
        index, mem = _least_fitting(ctx, ladder, full, ladder_first)
        if index >= 0 and mem.fits:
            plan = ladder[index]
            what = "no recompute" if index == 0 else _describe_recompute(plan)
            options.append(Option(plan=plan, memory=mem, why=f"{sharding}: {what} is the least that fits"))
            if index > 0:
                off = min_offload(ctx, ladder[0], ladder_first[0])
                if off is not None and off[0] > 0:
                    options.append(Option(plan=replace(ladder[0], offload=off[0]), memory=off[1],
                                          why=f"{sharding}: offloading {off[0]:.0%} of the optimizer avoids recompute"))
            else:
                break  # fits without recompute or offload: more sharding cannot be faster
        else:
            off = min_offload(ctx, ladder[-1], full)
            if off is not None:
                options.append(Option(plan=replace(ladder[-1], offload=off[0]), memory=off[1],
                                      why=f"{sharding}: fits only with full recompute and {off[0]:.0%} of the "
                                          "optimizer offloaded (the smallest fraction that fits)"))
            else:
                smallest = min(smallest, _memory(ctx, replace(ladder[-1], offload=1.0)).peak_bytes
                               if sharding != "none" else mem.peak_bytes)
    balanced = balanced_offload(ctx)
    extra = []
    for o in options:
        if 0 < o.plan.offload < balanced:
            plan = replace(o.plan, offload=math.ceil(balanced * 100) / 100)
            mem = _memory(ctx, plan)
            if mem.fits:
                extra.append(Option(plan=plan, memory=mem, why=o.why + f"; {plan.offload:.0%} balances GPU and CPU Adam"))
    options += extra
    if ctx.framework == "deepspeed":
        options = _deepspeed_runnable(ctx, options)
    if options:
        return Resolution(options=tuple(options))
    cap = ctx.cluster.gpu_memory_bytes
    need = f"{smallest / GIB:.1f} GiB" if math.isfinite(smallest) else "more than the host can offload"
    return Resolution(options=(), smallest_need_bytes=smallest if math.isfinite(smallest) else 0.0,
                      reason=f"needs {need} of {cap / GIB:.1f} GiB even with full recompute and optimizer offload")


def resolve_least(ctx: SearchContext, structure: Plan) -> Resolution | None:
    """``resolve``'s answer from one memory estimate when the structure's least form (its least
    sharding, no recompute, no offload) fits: then that form is its only option, as in ``resolve``
    (memory only grows from it down the recompute ladder and towards less sharding). None when it does
    not fit, or for DeepSpeed (whose runnable set needs ``resolve``): call ``resolve``. Most structures
    that reach the front of a search fit this way, with one estimate instead of about five."""
    shardings = framework_shardings(ctx, structure)
    if ctx.framework == "deepspeed" or structure.sharding != shardings[0] or structure.recompute != "none" \
            or structure.offload:
        return None
    mem = _memory(ctx, structure)
    if not (mem.fits_device and mem.fits):
        return None
    return Resolution(options=(Option(plan=structure, memory=mem,
                                      why=f"{structure.sharding}: no recompute is the least that fits"),))


def needs_full_recompute(ctx: SearchContext, structure: Plan) -> bool:
    """True when every option of ``structure`` must recompute all its layers: even the most frugal
    partial step of the recompute ladder (the one before "all layers"), under each sharding with the
    whole optimizer offloaded, does not fit the device. Memory only falls along the ladder and with the
    offload fraction, so no less recompute can fit either. Up to one estimate per sharding; the search
    uses it to raise a structure's lower bound to its full-recompute form before resolving it."""
    shardings = framework_shardings(ctx, structure)
    for sharding in shardings:
        if sharding in ("zero1", "distopt") and "zero2" in shardings:
            continue  # ZeRO-2 holds the same weights and optimizer shards and fewer gradients: never more
        base = replace(structure, sharding=sharding, recompute="none", recompute_num_layers=0, offload=0.0)
        ladder = recompute_ladder(ctx, base)
        partial = ladder[len(ladder) - 2]
        if _memory(ctx, replace(partial, offload=1.0 if sharding != "none" else 0.0)).fits_device:
            return False
    return True


def resolve_full_recompute(ctx: SearchContext, structure: Plan) -> Resolution:
    """``resolve``'s answer for a structure where ``needs_full_recompute`` holds, without its searches
    that cannot succeed: every shorter step of the recompute ladder fails even with the whole optimizer
    offloaded, so the bisection always ends at "all layers" and no offload can avoid recompute. Same
    options, same order, same reasons as ``resolve`` (``tests/test_search_speed.py`` compares them)."""
    options: list[Option] = []
    smallest = math.inf
    shardings = framework_shardings(ctx, structure)
    frugal = [_memory(ctx, replace(structure, sharding=sh, recompute="full", recompute_num_layers=0,
                                   offload=1.0 if sh != "none" else 0.0)) for sh in shardings]
    least = min(frugal, key=lambda m: m.peak_bytes)
    if not least.fits_device:
        return Resolution(options=(), smallest_need_bytes=least.peak_bytes,
                          reason=f"needs {least.peak_bytes / GIB:.1f} GiB of {least.capacity_bytes / GIB:.1f} "
                                 "GiB even with full recompute and optimizer offload")
    for sharding in shardings:
        base = replace(structure, sharding=sharding)
        if plan_violations(ctx.model, ctx.job, base, ctx.num_gpus):
            continue
        ladder = recompute_ladder(ctx, base)
        full = _memory(ctx, ladder[-1])
        if full.fits_device and full.fits:
            options.append(Option(plan=ladder[-1], memory=full,
                                  why=f"{sharding}: {_describe_recompute(ladder[-1])} is the least that fits"))
            continue
        off = min_offload(ctx, ladder[-1], full)
        if off is not None:
            options.append(Option(plan=replace(ladder[-1], offload=off[0]), memory=off[1],
                                  why=f"{sharding}: fits only with full recompute and {off[0]:.0%} of the "
                                      "optimizer offloaded (the smallest fraction that fits)"))
        else:
            smallest = min(smallest, _memory(ctx, replace(ladder[-1], offload=1.0)).peak_bytes
                           if sharding != "none" else full.peak_bytes)
    balanced = balanced_offload(ctx)
    extra = []
    for o in options:
        if 0 < o.plan.offload < balanced:
            plan = replace(o.plan, offload=math.ceil(balanced * 100) / 100)
            mem = _memory(ctx, plan)
            if mem.fits:
                extra.append(Option(plan=plan, memory=mem, why=o.why + f"; {plan.offload:.0%} balances GPU and CPU Adam"))
    options += extra
    if ctx.framework == "deepspeed":
        options = _deepspeed_runnable(ctx, options)
    if options:
        return Resolution(options=tuple(options))
    cap = ctx.cluster.gpu_memory_bytes
    need = f"{smallest / GIB:.1f} GiB" if math.isfinite(smallest) else "more than the host can offload"
    return Resolution(options=(), smallest_need_bytes=smallest if math.isfinite(smallest) else 0.0,
                      reason=f"needs {need} of {cap / GIB:.1f} GiB even with full recompute and optimizer offload")


def _deepspeed_runnable(ctx: SearchContext, options: list[Option]) -> list[Option]:
    """Keep what DeepSpeed can run; a partial offload below ZeRO-3 becomes a full one (DeepSpeed offloads
    all or nothing there) when that still fits the host."""
    from configurator.emit.deepspeed import unsupported

    out = []
    for o in options:
        if not unsupported(o.plan, ctx.job):
            out.append(o)
            continue
        if 0 < o.plan.offload < 1:
            full = replace(o.plan, offload=1.0)
            if not unsupported(full, ctx.job):
                mem = _memory(ctx, full)
                if mem.fits:
                    out.append(Option(plan=full, memory=mem, why=o.why + "; DeepSpeed below ZeRO-3 offloads all of it"))
    return out


def _describe_recompute(plan: Plan) -> str:
    if plan.recompute == "full" and plan.recompute_num_layers:
        return f"full recompute of {plan.recompute_num_layers} layers per chunk"
    return f"{plan.recompute} recompute"


__all__ = ["Option", "Resolution", "balanced_offload", "min_offload", "needs_full_recompute", "recompute_ladder", "resolve",
           "resolve_full_recompute", "resolve_least"]
