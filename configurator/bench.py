"""``configurator bench``: fixed plan-search scenarios, golden results, and the plan-quality gate.

Scenarios live in ``benchmarks/scenarios.json`` (the job, and a published or hand-tuned reference
plan whose memory choices are resolved like the search's, so both are modelled alike). A run records,
per scenario, the best plan, its modelled throughput and memory, the search's counts and wall time, and
the reference's modelled throughput.

``--check`` compares with the golden file (``benchmarks/golden.json``) and fails on any of:

* the best plan's modelled throughput dropped by more than ``MAX_DROP`` (0.5%);
* a scenario that had a plan has none;
* the golden best plan no longer fits memory under the current model;
* the search evaluated more than ``MAX_EVALUATION_GROWTH`` (2x) the options it did;
* the top plan is implausible: its predicted MFU is more than 5 points above the best MFU measured on
  its GPU family and precision in the published runs (``plausibility.py``, ``benchmarks/measured_mfu.json``).

Wall time is reported, never gated. ``--update`` rewrites the golden file and needs a reason, which is
appended to ``CHANGELOG.md`` ("the test failed" is not a reason; a model fix is).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configurator.cost.constants import CostConstants
from configurator.cost.gap import gap_line
from configurator.cost.step import prepare
from configurator.errors import InputError
from configurator.margin import default_margin
from configurator.memory import estimate_memory
from configurator.profiles import load_cluster, load_model
from configurator.render import estimate_dict, search_plans_dicts
from configurator.search.optimize import search
from configurator.search.resolve import costed_memory, fit_graphs, option_margin, resolve
from configurator.search.space import SearchContext, search_shardings
from configurator.specs.job import JobSpec
from configurator.specs.plan import PLAN_FIELDS, Plan, balanced_layout, plan_from_dict, plan_violations

MAX_DROP = 0.005
MAX_EVALUATION_GROWTH = 2.0
REFERENCE_KEYS = {"tp", "pp", "vpp", "cp", "ep", "etp", "micro_batch", "pipeline_layers", "source"}
SCENARIO_KEYS = {"name", "model", "cluster", "num_gpus", "nodes", "seq_len", "global_batch", "precision", "reference",
                 "runtime"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    name: str
    ctx: SearchContext
    reference: dict[str, Any] | None


def load_scenarios(path: Path) -> list[Scenario]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("scenarios", str(path), "file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError("scenarios", str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    out = []
    names = set()
    for i, s in enumerate(data.get("scenarios", [])):
        where = f"{path.name}:scenarios[{i}]"
        unknown = set(s) - SCENARIO_KEYS
        if unknown:
            raise InputError(where, sorted(unknown)[0], "is not a scenario key")
        for key in ("name", "model", "cluster", "seq_len", "global_batch"):
            if key not in s:
                raise InputError(where, key, "is missing")
        if s["name"] in names:
            raise InputError(f"{where}:name", s["name"], "is used twice")
        names.add(s["name"])
        cluster_arg = s["cluster"]
        if cluster_arg.endswith(".json"):
            cluster_arg = str((path.parent / cluster_arg).resolve())
        cluster = load_cluster(cluster_arg, num_gpus=s.get("num_gpus"), nodes=s.get("nodes"))
        job = JobSpec(global_batch=s["global_batch"], seq_len=s["seq_len"], precision=s.get("precision", "bf16"))
        ref = s.get("reference")
        if ref is not None and set(ref) - REFERENCE_KEYS:
            raise InputError(f"{where}:reference", sorted(set(ref) - REFERENCE_KEYS)[0], "is not a reference key")
        # The default memory margin, as `plan` keeps it: the gate measures the plans users are given.
        out.append(Scenario(name=s["name"], ctx=SearchContext(model=load_model(s["model"]), cluster=cluster, job=job,
                                                             runtime=s.get("runtime", "megatron"),
                                                             memory_margin=default_margin()),
                            reference=ref))
    if not out:
        raise InputError("scenarios", str(path), "lists no scenarios")
    return out


def reference_plan(ctx: SearchContext, ref: dict[str, Any]) -> Plan:
    """The reference's degrees as a structure (its memory choices are resolved separately)."""
    tp, pp, cp, vpp = ref.get("tp", 1), ref.get("pp", 1), ref.get("cp", 1), ref.get("vpp", 1)
    dp = ctx.num_gpus // (tp * pp * cp)
    layout: tuple[int, ...] = ()
    if ref.get("pipeline_layers") == "balanced" and ctx.model.num_layers % (pp * vpp):
        layout = balanced_layout(ctx.model.num_layers, pp, vpp)
    elif isinstance(ref.get("pipeline_layers"), (list, tuple)):  # a published uneven layout, stage by stage
        layout = tuple(int(n) for n in ref["pipeline_layers"])
    return Plan(tp=tp, pp=pp, cp=cp, vpp=vpp, dp=dp, ep=ref.get("ep", 1), etp=ref.get("etp", 1), sp=tp > 1,
                micro_batch=ref.get("micro_batch", 1), pipeline_layers=layout,
                sharding=search_shardings(ctx.runtime, dp * cp)[0])


def modelled_alike(ctx: SearchContext, structure: Plan, constants: CostConstants):  # type: ignore[no-untyped-def]
    """A published or hand-tuned plan modelled the way the search models its own: its memory choices
    (sharding, recompute, offload) resolved like the search's, the fastest option kept. None if nothing fits."""
    from dataclasses import replace

    from configurator.search.knobs import best_knobs

    timed = []
    for o in resolve(ctx, structure).options:
        # communication knobs chosen as the search chooses them (search/knobs.py)
        plan = fit_graphs(ctx, o.plan, o.estimate, option_margin(ctx, o))
        inputs, step = best_knobs(prepare(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime), constants)
        timed.append((replace(o, plan=inputs.plan, estimate=costed_memory(ctx, o.memory, inputs.plan)), step))
    return min(timed, key=lambda t: t[1].step_s) if timed else None


def run_scenario(scenario: Scenario, constants: CostConstants, time_budget_s: float | None = None) -> dict[str, Any]:
    ctx = scenario.ctx
    start = time.perf_counter()
    result = search(ctx, top_k=3, constants=constants, time_budget_s=time_budget_s)
    out: dict[str, Any] = {"name": scenario.name, "search": result.as_dict(), "best": None, "reference": None,
                           "wall_s": round(time.perf_counter() - start, 3)}
    if result.ranked:
        out["best"] = search_plans_dicts(ctx.model, ctx.cluster, ctx.job, list(result.ranked[:1]))[0]
        out["plausibility"] = plausibility(ctx, result.ranked[0].step.mfu)
    if scenario.reference is not None:
        structure = reference_plan(ctx, scenario.reference)
        reasons = plan_violations(ctx.model, ctx.job, structure, ctx.num_gpus)
        if reasons:
            out["reference"] = {"error": reasons[0], "source": scenario.reference.get("source", "")}
        else:
            best = modelled_alike(ctx, structure, constants)
            if best is None:
                out["reference"] = {"error": "does not fit memory", "source": scenario.reference.get("source", "")}
            else:
                option, step = best
                ref = estimate_dict(ctx.model, ctx.cluster, ctx.job, option.plan, option.memory, [option.why], step)
                ref["source"] = scenario.reference.get("source", "")
                if result.ranked:
                    ref["why_top_plan_is_faster"] = gap_line(result.ranked[0].step, step)
                out["reference"] = ref
    return out


MEASURED_MFU = Path(__file__).resolve().parent.parent / "benchmarks" / "measured_mfu.json"


def plausibility(ctx: SearchContext, predicted_mfu: float) -> dict[str, Any] | None:
    """The top plan's predicted MFU against the best measured for its GPU family and precision
    (``configurator/plausibility.py``); None without the measured table."""
    from configurator.plausibility import check_mfu, load_table

    if not MEASURED_MFU.exists():
        return None
    return check_mfu(ctx.cluster.gpu.family, ctx.job.precision, predicted_mfu, load_table(MEASURED_MFU))


def golden_entry(result: dict[str, Any]) -> dict[str, Any]:
    best = result["best"]
    entry: dict[str, Any] = {"name": result["name"], "evaluated": result["search"]["evaluated"],
                             "candidates": result["search"]["candidates"], "best": None}
    if best is not None:
        entry["best"] = {"plan": {k: best["plan"][k] for k in PLAN_FIELDS if k in best["plan"]},
                         "tokens_per_s_per_gpu": best["time"]["tokens_per_s_per_gpu"],
                         "peak_gib": best["memory"]["peak_gib"]}
    ref = result.get("reference")
    entry["reference_tokens_per_s_per_gpu"] = ref["time"]["tokens_per_s_per_gpu"] if ref and "time" in ref else None
    return entry


def compare(results: list[dict[str, Any]], golden: dict[str, Any], scenarios: list[Scenario]) -> list[str]:
    """Every regression against the golden file (module docstring)."""
    failures = []
    by_name = {g["name"]: g for g in golden.get("scenarios", [])}
    ctx_by_name = {s.name: s.ctx for s in scenarios}
    for r in results:
        g = by_name.get(r["name"])
        if g is None:
            failures.append(f"{r['name']}: not in the golden file (run bench --update with a reason)")
            continue
        gb = g.get("best")
        if gb is not None and r["best"] is None:
            failures.append(f"{r['name']}: had a plan ({gb['tokens_per_s_per_gpu']:.1f} tokens/s/GPU), now none fits")
            continue
        if gb is not None:
            now = r["best"]["time"]["tokens_per_s_per_gpu"]
            if now < gb["tokens_per_s_per_gpu"] * (1 - MAX_DROP):
                failures.append(f"{r['name']}: best plan's modelled throughput dropped {100 * (1 - now / gb['tokens_per_s_per_gpu']):.2f}% "
                                f"({gb['tokens_per_s_per_gpu']:.1f} -> {now:.1f} tokens/s/GPU)")
            ctx = ctx_by_name[r["name"]]
            plan = plan_from_dict(gb["plan"])
            memory = estimate_memory(ctx.model, ctx.cluster, ctx.job, plan, runtime=ctx.runtime)
            if not memory.fits:
                failures.append(f"{r['name']}: the golden best plan {plan.describe()} no longer fits memory "
                                f"({memory.reason()})")
        verdict = r.get("plausibility")
        if verdict and verdict.get("flagged"):
            failures.append(f"{r['name']}: implausible top plan: predicted MFU {100 * verdict['predicted_mfu']:.1f}% is "
                            f"{verdict['excess_points']:.1f} points above the best measured on {verdict['group']} "
                            f"({100 * verdict['best_measured_mfu']:.1f}%, {verdict['best_measured_run']})")
        if r["search"]["evaluated"] > MAX_EVALUATION_GROWTH * max(1, g["evaluated"]):
            failures.append(f"{r['name']}: the search evaluated {r['search']['evaluated']} options, more than "
                            f"{MAX_EVALUATION_GROWTH:g}x the golden {g['evaluated']}")
    return failures


def write_golden(results: list[dict[str, Any]], path: Path, reason: str, changelog: Path) -> None:
    today = _dt.date.today().isoformat()
    data = {"about": "Golden results of `configurator bench` (configurator/bench.py). Change only with "
                     "`configurator bench --update --reason ...`, which records the reason in CHANGELOG.md.",
            "updated": {"date": today, "reason": reason},
            "scenarios": [golden_entry(r) for r in results]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    line = f"- {today}: benchmarks/golden.json updated ({len(results)} scenarios): {reason}\n"
    if not changelog.exists():
        changelog.write_text("# Changelog\n\n")
    with changelog.open("a") as handle:
        handle.write(line)


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    best, ref = r["best"], r.get("reference")
    return {
        "name": r["name"],
        "best": plan_summary(best["plan"]) if best else "none fits",
        "tokens_per_s_per_gpu": best["time"]["tokens_per_s_per_gpu"] if best else None,
        "peak_gib": best["memory"]["peak_gib"] if best else None,
        "reference_tokens_per_s_per_gpu": ref["time"]["tokens_per_s_per_gpu"] if ref and "time" in ref else None,
        "candidates": r["search"]["candidates"], "evaluated": r["search"]["evaluated"], "wall_s": r["wall_s"],
        "plausibility": r.get("plausibility"),
    }


def plan_summary(plan: dict[str, Any]) -> str:
    return plan_from_dict(plan).describe()


__all__ = ["MAX_DROP", "MAX_EVALUATION_GROWTH", "Scenario", "compare", "golden_entry", "load_scenarios",
           "modelled_alike", "reference_plan", "run_scenario", "summary_row", "write_golden"]
