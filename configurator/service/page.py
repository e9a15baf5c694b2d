"""The HTML page of a plan job (``GET /plans/{id}``): status, the top-k table with the error bands, the
conventional plan beside the best, and the best plan drawn as ``configurator explain --svg`` draws it
(pipeline timeline and memory per stage, with their bands), and the measured-job line of ``anchor.py`` (the
best published run of the job; marked UNPROVEN when its flag is set, as ``plan`` prints it in red). Rendered
from the Jinja2 template ``configurator/templates/plan_page.html`` (autoescaped; only the SVG, built by
``explain.py`` with its own escaping, is inserted as markup)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from configurator.service.store import Job, Store


def _best_svg(job: Job, store: Store) -> str:
    from configurator.cost.constants import load_calibration
    from configurator.explain import svg, timeline
    from configurator.memory import estimate_memory
    from configurator.profiles import load_model
    from configurator.service.jobs import build_cluster
    from configurator.specs.job import JobSpec
    from configurator.specs.plan import plan_from_dict
    from configurator.uncertainty import band_for

    best = job.result["plans"][0]  # type: ignore[index]
    request = job.request
    found = store.get_cluster(request["cluster"], request.get("cluster_version"))
    model = load_model(request["model"])
    cluster = build_cluster(request, found[1] if found else None)
    spec = JobSpec(global_batch=request["global_batch"], seq_len=request["seq_len"],
                   precision=request.get("precision", "bf16"))
    plan = plan_from_dict(best["plan"])
    runtime = best["time"].get("runtime", "megatron")
    tl = timeline(model, cluster, spec, plan, load_calibration(), runtime=runtime)
    memory = estimate_memory(model, cluster, spec, plan, runtime=runtime)
    band = band_for(model, cluster, spec, plan, runtime, tl.step.tokens_per_s_per_gpu, memory.peak_bytes,
                    memory.capacity_bytes)
    return svg(tl, memory, title=f"best plan: {plan.describe()}", band=band)


def _describe(plan: dict[str, Any]) -> str:
    from configurator.specs.plan import plan_from_dict

    return plan_from_dict(plan).describe()


@lru_cache(maxsize=1)
def _environment():  # type: ignore[no-untyped-def]
    from jinja2 import Environment, PackageLoader, select_autoescape

    from configurator.uncertainty import risk_pct

    env = Environment(loader=PackageLoader("configurator", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["describe"] = _describe
    env.filters["risk_pct"] = risk_pct
    return env


def render_page(job: Job, store: Store) -> str:
    result = job.result or {}
    plans: list[dict[str, Any]] = result.get("plans", [])
    return _environment().get_template("plan_page.html").render(
        job=job, request=job.request, plans=plans, conventional=result.get("conventional"),
        measured=result.get("measured_job"), svg=_best_svg(job, store) if plans else "")


__all__ = ["render_page"]
