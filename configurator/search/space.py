"""The plan space as data: ordered axes whose values may depend on the axes before them, plus
Megatron-LM's legality rules (``plan_violations``). Every candidate that is dropped keeps its reason.

Axes (in order): tp, cp, pp, vpp, ep, etp, micro_batch. ``dp`` follows from the GPU count; sequence
parallelism is on whenever tp > 1 (it never costs time and always saves memory in Megatron). Sharding,
recompute and the optimizer offload fraction are not axes but resolved per structure by
``configurator.search.resolve`` (the least sharding and recompute that fit; the offload fraction that
fits or that minimises step time), because more of any of them never makes a plan faster by itself.

Values come from the model, the cluster and the job, with the reason a value is left out counted in
``SpaceStats.pruned`` (e.g. TP beyond one NVLink domain). Uneven layer counts get Megatron's
``balanced_layout`` (ends lighter), so pp needs not divide the layers; a pipelined structure also comes
with the embedding/loss-aware split of ``configurator/layouts.py`` where that differs (Megatron only).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from configurator.recompute import MEGATRON_RUNTIMES  # (whose ZeRO-2/3 plans are Megatron-FSDP's)
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import MEGATRON_FSDP_SHARDINGS, SHARDINGS, Plan, balanced_layout, plan_violations, \
    unchecked_replacer

MAX_MICRO_BATCH = 8
MIN_TOKENS_PER_CP_RANK = 1024
MAX_VPP = 8
SEARCH_SHARDINGS: dict[str, tuple[str, ...]] = {
    # Least sharded first. Megatron-LM: the distributed optimizer (ZeRO-1 over DP x CP; it holds less than
    # no sharding and, with its gather overlapped, is not slower, so "none" is only used at dp*cp = 1),
    # Megatron-FSDP for ZeRO-2/3 (--data-parallel-sharding-strategy optim_grads / optim_grads_params).
    "megatron": ("distopt", "zero2", "zero3"),
    "nemo": ("distopt", "zero3"),
    "deepspeed": ("zero1", "zero2", "zero3"),
    "fsdp": ("zero3", "zero2"),
    "llm-foundry": ("zero3", "zero2"),
    "megatron-2021": ("none", "distopt"),
}


FRAMEWORK_RUNTIME = {"megatron": "megatron", "deepspeed": "deepspeed", "torchtitan": "fsdp"}
"""The runtime whose mechanics model each framework's plans (torchtitan: FSDP2)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchContext:
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    runtime: str = "megatron"
    framework: str = "megatron"
    """'megatron' (everything Megatron-LM runs) or 'deepspeed' (only what DeepSpeed can run: no CP, no
    interleaving, no expert parallelism, no Megatron-style SP; see ``configurator.emit.deepspeed``) or
    'torchtitan' (no expert-TP; resolved plans filtered by ``configurator.emit.torchtitan.unsupported``)."""
    memory_margin: Any = None
    """``configurator.margin.MemoryMargin`` kept free on every GPU by ``search/resolve.py`` (None: none);
    plans that fit only without it come back marked ``tight``."""

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus


@dataclass(kw_only=True, slots=True)
class SpaceStats:
    """What enumeration saw: structures generated and every reason one was dropped."""

    generated: int = 0
    legal: int = 0
    pruned: Counter[str] = field(default_factory=Counter)


Values = Callable[[SearchContext, dict[str, Any], SpaceStats], list[Any]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Axis:
    name: str
    doc: str
    values: Values


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def _tp(ctx: SearchContext, _: dict[str, Any], stats: SpaceStats) -> list[int]:
    domain = ctx.cluster.nvlink_domain_gpus
    limit = min(domain, 16, ctx.num_gpus)
    values = [v for v in _powers_of_two(limit) if ctx.num_gpus % v == 0]
    beyond = [v for v in _powers_of_two(ctx.num_gpus) if v > limit]
    if beyond:
        stats.pruned["tp larger than one NVLink domain (or 16) never pays for its all-reduces"] += len(beyond)
    return values


def _cp(ctx: SearchContext, chosen: dict[str, Any], stats: SpaceStats) -> list[int]:
    if ctx.framework == "deepspeed":
        return [1]
    rest = ctx.num_gpus // chosen["tp"]
    out = []
    for v in _powers_of_two(rest):
        if ctx.job.seq_len // v < MIN_TOKENS_PER_CP_RANK:
            stats.pruned[f"cp leaves under {MIN_TOKENS_PER_CP_RANK} tokens per rank"] += 1
            continue
        out.append(v)
    return out


def _pp(ctx: SearchContext, chosen: dict[str, Any], _: SpaceStats) -> list[int]:
    rest = ctx.num_gpus // (chosen["tp"] * chosen["cp"])
    return [v for v in range(1, min(rest, ctx.model.num_layers) + 1) if rest % v == 0]


def _vpp(ctx: SearchContext, chosen: dict[str, Any], stats: SpaceStats) -> list[int]:
    pp = chosen["pp"]
    if pp == 1 or ctx.framework == "deepspeed":
        return [1]
    out = [1]
    for v in range(2, MAX_VPP + 1):
        if ctx.model.num_layers < pp * v:
            break
        if ctx.model.num_layers % (pp * v) and ctx.model.num_layers // (pp * v) < 2:
            stats.pruned["uneven interleaving with chunks under 2 layers"] += 1
            continue
        out.append(v)
    return out


def _ep(ctx: SearchContext, chosen: dict[str, Any], _: SpaceStats) -> list[int]:
    if not ctx.model.is_moe or ctx.framework == "deepspeed":
        return [1]
    per_stage = ctx.num_gpus // chosen["pp"]
    return [v for v in range(1, min(ctx.model.num_experts, per_stage) + 1)
            if ctx.model.num_experts % v == 0 and per_stage % v == 0 and (v & (v - 1) == 0 or v == ctx.model.num_experts)]


def _etp(ctx: SearchContext, chosen: dict[str, Any], _: SpaceStats) -> list[int]:
    if not ctx.model.is_moe or chosen["tp"] == 1 or ctx.framework == "torchtitan":  # torchtitan: no expert-TP
        return [1]
    return [1, chosen["tp"]]


def _micro_batch(ctx: SearchContext, chosen: dict[str, Any], _: SpaceStats) -> list[int]:
    dp = ctx.num_gpus // (chosen["tp"] * chosen["cp"] * chosen["pp"])
    per_dp = ctx.job.global_batch // dp if ctx.job.global_batch % dp == 0 else 0
    return [v for v in range(1, MAX_MICRO_BATCH + 1) if per_dp and per_dp % v == 0 and (v & (v - 1) == 0)]


def search_shardings(runtime: str, dp_cp: int) -> tuple[str, ...]:
    """Shardings the search tries for a structure, least sharded first."""
    allowed = SEARCH_SHARDINGS.get(runtime, SHARDINGS)
    return allowed if dp_cp > 1 else allowed[:1]


def hsdp_shard_group(ctx: SearchContext, plan: Plan) -> int:
    """GPUs per HSDP shard group for a structure: the data/context-parallel ranks inside one node
    (Megatron's rank order puts tp innermost, then cp and dp), so ZeRO-3's gathers and reduce-scatters
    stay on NVLink and only the gradient shards cross nodes, once per step. 0 where HSDP would be plain
    ZeRO-3 (the dp x cp group fits in a node) or has no group of two."""
    group = plan.dp * plan.cp
    inside = min(group, max(1, ctx.cluster.gpus_per_node // plan.tp))
    if inside < 2 or inside >= group or group % inside:
        return 0
    return inside


def offload_runs(ctx: SearchContext, sharding: str) -> bool:
    """Whether the framework can offload optimizer states to the host under ``sharding``. Not without sharding
    (nothing to offload), and not under Megatron-FSDP: Megatron-Core 0.19's ``HybridDeviceOptimizer``
    (megatron/core/optimizer/cpu_offloading/hybrid_optimizer.py, ``_init_sub_optimizers``) copies each parameter
    with ``param.detach().clone().cpu().pin_memory()``, which fails on Megatron-FSDP's sharded DTensor parameters
    while the optimizer is built (NVIDIA/Megatron-LM#1986, "Megatron FSDP does not work with CPU_OFFLOADING";
    the fix, #4623, works on local shards and was still open in 2026-05, with checkpoint saves hanging on an MoE
    model, #4910). The distributed optimizer (ZeRO-1) offloads, as does DeepSpeed's ZeRO."""
    if sharding == "none":
        return False
    return not (ctx.framework == "megatron" and ctx.runtime in MEGATRON_RUNTIMES
                and sharding in MEGATRON_FSDP_SHARDINGS)


def max_offload(ctx: SearchContext, sharding: str) -> float:
    """The largest optimizer offload fraction a plan under ``sharding`` can have (``offload_runs``)."""
    return 1.0 if offload_runs(ctx, sharding) else 0.0


def framework_shardings(ctx: SearchContext, plan: Plan) -> tuple[str, ...]:
    """``search_shardings`` narrowed to what the target framework runs with this structure (Megatron-LM:
    HSDP inside the node before ZeRO-3 across it, where ``hsdp_shard_group`` gives a group)."""
    shardings = search_shardings(ctx.runtime, plan.dp * plan.cp)
    if ctx.runtime == "megatron" and ctx.framework == "megatron" and "zero3" in shardings \
            and hsdp_shard_group(ctx, plan):
        at = shardings.index("zero3")
        shardings = (*shardings[:at], "hsdp", *shardings[at:])
    if ctx.framework == "deepspeed":
        # Pipeline engine: ZeRO stage < 2; AutoTP: ZeRO stage <= 2.
        shardings = tuple(s for s in shardings if not (plan.pp > 1 and s in ("zero2", "zero3"))
                          and not (plan.tp > 1 and s == "zero3")) or ("zero1",)
    return shardings


AXES: tuple[Axis, ...] = (
    Axis(name="tp", doc="tensor parallel: powers of two inside one NVLink domain", values=_tp),
    Axis(name="cp", doc=f"context parallel: powers of two, >= {MIN_TOKENS_PER_CP_RANK} tokens per rank", values=_cp),
    Axis(name="pp", doc="pipeline stages: divisors of the remaining GPUs, at most one layer each", values=_pp),
    Axis(name="vpp", doc=f"model chunks per pipeline rank (interleaved 1F1B), up to {MAX_VPP}", values=_vpp),
    Axis(name="ep", doc="expert parallel (MoE): divisors of the expert count and of the stage's GPUs", values=_ep),
    Axis(name="etp", doc="expert tensor parallel (MoE): 1 or tp", values=_etp),
    Axis(name="micro_batch", doc=f"sequences per micro-batch: powers of two up to {MAX_MICRO_BATCH}", values=_micro_batch),
)


_DEFAULT_PLAN = Plan()
_structure_of = unchecked_replacer("tp", "cp", "pp", "vpp", "dp", "ep", "etp", "sp", "micro_batch", "sharding",
                                   "pipeline_layers", "cp_comm")
"""``_DEFAULT_PLAN`` with a point's fields (``structure_plan``), without the keyword call's dict per structure."""
_with_layout = unchecked_replacer("pipeline_layers")


def structure_plan(ctx: SearchContext, values: dict[str, Any],
                   layouts: dict[tuple[int, int], tuple[int, ...]] | None = None) -> Plan:
    """The plan of one point of the space (no recompute, no offload yet). ``layouts``: a cache of
    ``balanced_layout`` by (pp, vpp) that the enumeration keeps (the same few splits for thousands of points)."""
    tp, cp, pp, vpp = values["tp"], values["cp"], values["pp"], values["vpp"]
    dp = ctx.num_gpus // (tp * cp * pp)
    layout: tuple[int, ...] = ()
    if ctx.model.num_layers % (pp * vpp):
        if layouts is None:
            layout = balanced_layout(ctx.model.num_layers, pp, vpp)
        else:
            layout = layouts.get((pp, vpp))  # type: ignore[assignment]
            if layout is None:
                layout = layouts[(pp, vpp)] = balanced_layout(ctx.model.num_layers, pp, vpp)
    # Degrees from the axes' own value lists (positive ints) and a sharding from SHARDINGS: Plan's checks
    # cannot fail, and skipping them matters at 20,000 structures; legality is ``plan_violations``'s.
    return _structure_of(_DEFAULT_PLAN, tp, cp, pp, vpp, dp, values["ep"], values["etp"],
                         tp > 1 and ctx.framework != "deepspeed", values["micro_batch"],
                         search_shardings(ctx.runtime, dp * cp)[0], layout,
                         # torchtitan 0.3.0's CP for language models is FlexAttention's K/V all-gather only
                         "all_gather" if ctx.framework == "torchtitan" and cp > 1 else None)


def _head_aware_variant(ctx: SearchContext, plan: Plan,
                        alternatives: dict[tuple, tuple[tuple[int, ...], bool | None]] | None = None) -> Plan | None:
    """The pipelined structure with the embedding/loss-aware split (``configurator/layouts.py``) as a
    second candidate where it differs from the default split; Megatron only (the emitted
    ``--pipeline-model-parallel-layout``), and only if still legal. ``alternatives``: a cache of the split by
    (pp, vpp, default split), which is all it depends on for one search's model and job, with whether the
    variant is legal once known. ``plan`` is a legal structure (no partial recompute): its variant differs from it
    only in the split, and of ``plan_violations``' rules only the split's sum reads the split then (the
    ``recompute_num_layers`` rule is void at 0; the even-split rule is for plans without a split), so the variants
    of every structure with one key are legal or not together (``tests/test_space_enumeration.py`` compares
    with checking each)."""
    if plan.pp < 2 or ctx.framework != "megatron":
        return None
    if alternatives is None:
        from configurator.layouts import alternative_layout

        layout = alternative_layout(ctx.model, ctx.job, plan)
        if not layout:
            return None
        variant = _with_layout(plan, layout)
        return None if plan_violations(ctx.model, ctx.job, variant, ctx.num_gpus) else variant
    key = (plan.pp, plan.vpp, plan.pipeline_layers)
    hit = alternatives.get(key)
    if hit is None:
        from configurator.layouts import alternative_layout

        hit = alternatives[key] = (alternative_layout(ctx.model, ctx.job, plan), None)
    layout, legal = hit
    if not layout or legal is False:
        return None
    variant = _with_layout(plan, layout)
    if legal is None or plan.recompute_num_layers:
        legal = not plan_violations(ctx.model, ctx.job, variant, ctx.num_gpus)
        if not plan.recompute_num_layers:
            alternatives[key] = (layout, legal)
    return variant if legal else None


def enumerate_plans(ctx: SearchContext, stats: SpaceStats | None = None) -> Iterator[Plan]:
    """Every legal structure of the space; illegal ones are counted by their first reason."""
    stats = stats if stats is not None else SpaceStats()
    model, job, num_gpus = ctx.model, ctx.job, ctx.num_gpus
    last = len(AXES) - 1
    layouts: dict[tuple[int, int], tuple[int, ...]] = {}
    alternatives: dict[tuple, tuple[tuple[int, ...], bool | None]] = {}
    reasons_seen: dict[str, str] = {}

    def walk(i: int, chosen: dict[str, Any]) -> Iterator[Plan]:
        axis = AXES[i]
        for value in axis.values(ctx, chosen, stats):
            chosen[axis.name] = value
            if i < last:
                yield from walk(i + 1, chosen)
                continue
            # A point of the space: the structure, if legal, and its head-aware split (``_head_aware_variant``).
            stats.generated += 1
            plan = structure_plan(ctx, chosen, layouts)
            reasons = plan_violations(model, job, plan, num_gpus)
            if reasons:
                reason = reasons_seen.get(reasons[0])
                if reason is None:
                    reason = reasons_seen[reasons[0]] = re.sub(r"\d+", "N", reasons[0])
                stats.pruned[reason] += 1
                continue
            stats.legal += 1
            yield plan
            alternative = _head_aware_variant(ctx, plan, alternatives)
            if alternative is not None:
                stats.generated += 1
                stats.legal += 1
                yield alternative
        chosen.pop(axis.name, None)

    yield from walk(0, {})


__all__ = ["AXES", "Axis", "MEGATRON_FSDP_SHARDINGS", "SearchContext", "SpaceStats",
           "enumerate_plans", "framework_shardings", "hsdp_shard_group", "max_offload", "offload_runs",
           "search_shardings",
           "structure_plan"]
