"""Why one plan is modelled faster than another: the step terms that separate them.

Used where the search's top plan beats a published plan by more than ``EXPLAIN_GAP`` (15%): a gap that
large is either a real finding or a model artefact, and the reader needs the mechanism to judge which.
"""

from __future__ import annotations

from configurator.cost.step import StepReport
from configurator.specs.plan import Plan, ep_overlap_conflicts

EXPLAIN_GAP = 0.15


def separating_terms(best: StepReport, other: StepReport, top: int = 2) -> list[tuple[str, float]]:
    """The step terms where ``other`` spends the most seconds more than ``best`` (plans of one job train
    the same tokens per step on the same GPUs, so step terms compare directly)."""
    b, o = dict(best.breakdown_s), dict(other.breakdown_s)
    return sorted(((k, o[k] - b[k]) for k in b), key=lambda kv: -kv[1])[:top]


def gap_line(best: StepReport, other: StepReport, label: str = "the published plan",
             best_plan: Plan | None = None, other_plan: Plan | None = None) -> str | None:
    """One line saying why ``best`` beats ``other`` when it does by more than ``EXPLAIN_GAP``; else None.
    Given both plans, the largest separating term is followed by the mechanism behind it
    (``term_mechanism``)."""
    speedup = best.tokens_per_s_per_gpu / max(other.tokens_per_s_per_gpu, 1e-30) - 1.0
    if speedup <= EXPLAIN_GAP:
        return None
    terms = [(name, d) for name, d in separating_terms(best, other) if d > 0]
    parts = [f"{name} {d:+.2f} s" for name, d in terms]
    line = (f"{100 * speedup:.0f}% faster than {label} (modelled): it loses "
            + (", ".join(parts) if parts else "no single term") + f" per step ({other.step_s:.2f} s vs {best.step_s:.2f} s)")
    if terms and best_plan is not None and other_plan is not None:
        why = (launch_mechanism(best, other, best_plan, other_plan) if terms[0][0] == "compute" else "") \
            or term_mechanism(terms[0][0], best_plan, other_plan)
        if why:
            line += f"; {terms[0][0]}: {why}"
    return line


def launch_mechanism(best: StepReport, other: StepReport, best_plan: Plan, other_plan: Plan) -> str:
    """The compute term's mechanism when most of what separates it is host time (``compute_detail_s``'s
    ``launch``: kernel launches the GPU work does not cover and the waits after device-to-host syncs,
    ``cost/launch.py``), not GPU work: "" otherwise. A plan-difference guess (``term_mechanism``) would name the
    experts' imbalance or the recompute there, which is not what the model charges."""
    b, o = dict(best.compute_detail_s), dict(other.compute_detail_s)
    deltas = {k: o[k] - b.get(k, 0.0) for k in o}
    launch = deltas.get("launch", 0.0)
    if launch <= 0 or launch < max(deltas.values()):
        return ""
    said = [f"mb={other_plan.micro_batch} against mb={best_plan.micro_batch}"] \
        if other_plan.micro_batch != best_plan.micro_batch else []
    if other_plan.ep != best_plan.ep:
        said.append(f"ep={other_plan.ep} against ep={best_plan.ep}")
    if best_plan.cuda_graphs and not other_plan.cuda_graphs:
        said.append("eager against CUDA graphs, which replay each layer's attention and router as one launch")
    why = f"; {', '.join(said)}" if said else ""
    return (f"its host cannot keep up: {launch:.2f} s more of kernel launches and sync waits the GPU work does "
            f"not cover (cost/launch.py{why}: smaller micro-batches launch every layer's kernels for fewer tokens, "
            "and each dropless MoE layer with ep > 1 waits for its token counts)")


def _recompute_text(plan: Plan) -> str:
    """What ``plan`` recomputes, as ``describe()`` writes it after ``rc=``."""
    return plan.describe().split("rc=")[1].split(" ")[0]


def term_mechanism(term: str, best: Plan, other: Plan) -> str:
    """The plan difference behind a step term that separates ``other`` from ``best`` ("" if none is
    evident): an exposed all-to-all (and why Megatron cannot overlap it), recompute, pipeline depth."""
    if term == "ep_comm":
        said = []
        if not other.ep_overlap:
            conflicts = ep_overlap_conflicts(other)
            said.append("its all-to-all is exposed" + (f" (Megatron's EP overlap {conflicts[0]})" if conflicts else ""))
        if best.ep_overlap:
            said.append("the top plan hides its own under compute")
        if best.ep_dispatcher == "flex" and other.ep_dispatcher != "flex":
            said.append("the top plan dispatches with flex (DeepEP: one copy per destination node across the "
                        "network, not one per token-expert pair)")
        if best.ep < other.ep:
            said.append(f"it sends over ep={best.ep} instead of {other.ep}")
        return "; ".join(said)
    if term == "compute":
        if other.recompute != "none" and best.recompute == "none":
            return f"it recomputes ({_recompute_text(other)}), the top plan does not"
        if other.recompute == "full" and best.recompute == "selective":
            return f"it recomputes whole layers (rc=full), the top plan only {_recompute_text(best)}"
        if other.recompute_modules and "moe" in other.recompute_modules:
            return "its recomputed MoE layers repeat their expert GEMMs"
        if other.ep > best.ep:
            return (f"its experts sit on ep={other.ep} ranks, and the busiest one (learned routing's load "
                    f"imbalance, moe.expert_load_cv) sets the pace; ep={best.ep} x etp={best.etp} spreads each expert instead")
        if other.etp * other.tp != best.etp * best.tp:
            return f"GEMMs split over tp={other.tp}, etp={other.etp} vs tp={best.tp}, etp={best.etp}"
        return ""
    if term == "pipeline_bubble":
        return f"pp={other.pp} vpp={other.vpp} fills and drains a deeper pipeline than pp={best.pp} vpp={best.vpp}"
    return ""


__all__ = ["EXPLAIN_GAP", "gap_line", "launch_mechanism", "separating_terms", "term_mechanism"]


VERSUS_KEYS = {"tp": "tp", "pp": "pp", "vpp": "vpp", "cp": "cp", "ep": "ep", "etp": "etp", "mb": "micro_batch",
               "micro_batch": "micro_batch"}


def parse_versus(text: str) -> dict[str, int]:
    """``plan --versus 'tp=1,pp=16,ep=64,mb=1'`` -> a reference dict for ``bench.reference_plan``."""
    from configurator.errors import InputError

    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key not in VERSUS_KEYS:
            raise InputError("versus", part, f"names no plan degree (use {', '.join(sorted(VERSUS_KEYS))})")
        try:
            number = int(value)
        except ValueError:
            raise InputError("versus", part, "needs an integer value") from None
        if number < 1:
            raise InputError("versus", part, "must be >= 1")
        out[VERSUS_KEYS[key]] = number
    if not out:
        raise InputError("versus", text, "names no plan degree (e.g. 'tp=1,pp=16,ep=64,mb=1')")
    return out


def versus_line(ctx, best: StepReport, reference: dict[str, int], constants,  # type: ignore[no-untyped-def]
                best_plan: Plan | None = None) -> str:
    """``plan --versus``'s line: the reference modelled like the search's plans, and why the top plan
    beats it when it does by more than ``EXPLAIN_GAP``."""
    from configurator.bench import modelled_alike, reference_plan
    from configurator.specs.plan import plan_violations

    # Layers that do not divide over pp x vpp are split as evenly as possible, ends lighter (as published
    # uneven layouts are), instead of refusing the comparison.
    structure = reference_plan(ctx, {"pipeline_layers": "balanced", **reference})
    reasons = plan_violations(ctx.model, ctx.job, structure, ctx.num_gpus)
    if reasons:
        return f"versus {structure.describe()}: not a legal plan here ({reasons[0]})"
    modelled = modelled_alike(ctx, structure, constants)
    if modelled is None:
        return f"versus {structure.describe()}: does not fit memory under any sharding/recompute/offload"
    option, step = modelled
    why = gap_line(best, step, label=option.plan.describe(), best_plan=best_plan, other_plan=option.plan)
    if why is None:
        return (f"versus {option.plan.describe()}: {step.tokens_per_s_per_gpu:,.0f} tokens/s/GPU modelled, "
                f"the top plan is {100 * (best.tokens_per_s_per_gpu / step.tokens_per_s_per_gpu - 1):+.0f}%")
    return "why: top plan is " + why
